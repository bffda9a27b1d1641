"""The package's real import graph, function-level imports included, and the layers contract.

Read with ``ast`` (nothing is imported), so the graph is exactly what the source says: every
``import`` and ``from ... import`` anywhere in a module, including inside functions and
``TYPE_CHECKING`` blocks. ``from pkg import sub`` where ``sub`` is a module counts as an
import of ``pkg.sub`` only (as import-linter counts it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImportGraph:
    modules: set[str]
    edges: dict[str, set[str]] = field(default_factory=dict)  # importer -> imported
    # (module, line, imported module, the source line and the three before it) for every
    # import written inside a function
    function_level: list[tuple[str, int, str, str]] = field(default_factory=list)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build_graph(package_dir: Path) -> ImportGraph:
    """The import graph of the package at ``package_dir`` (a folder with ``__init__.py``)."""
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph = ImportGraph(modules=set(files))
    for name, path in files.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        is_pkg = path.name == "__init__.py"
        base_pkg = name if is_pkg else name.rpartition(".")[0]
        inside = {
            id(node)
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
        }
        targets_of = graph.edges.setdefault(name, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base_pkg.split(".")[: len(base_pkg.split(".")) - node.level + 1]
                    module = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in files]
                found = subs + ([module] if len(subs) < len(node.names) else [])
            else:
                continue
            for target in found:
                if id(node) in inside:
                    context = "\n".join(lines[max(0, node.lineno - 4) : node.lineno])
                    graph.function_level.append((name, node.lineno, target, context))
                # an import of a.b.c reaches the deepest module of the package it names
                while target and target not in files and "." in target:
                    target = target.rpartition(".")[0]
                if target in files and target != name:
                    targets_of.add(target)
    return graph


def find_cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (import circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # iterative Tarjan would be longer; graphs here are small
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def layer_of(module: str, layers: Sequence[Sequence[str]]) -> int | None:
    """Index of the layer holding ``module`` (0 = top), by longest matching prefix."""
    best, best_len = None, -1
    for i, members in enumerate(layers):
        for prefix in members:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def upward_imports(
    edges: Mapping[str, Iterable[str]],
    layers: Sequence[Sequence[str]],
    exempt: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Every import of a module in a HIGHER layer (a lower index) than the importer's.

    ``layers`` lists the layers top first; each is a list of module prefixes. Modules in no
    layer (and ``exempt`` importers, such as the package's facade) are not checked.
    """
    exempt = set(exempt)
    bad = []
    for importer, targets in sorted(edges.items()):
        if importer in exempt:
            continue
        mine = layer_of(importer, layers)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs < mine:
                bad.append((importer, target))
    return bad
