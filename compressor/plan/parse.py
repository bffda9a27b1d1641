"""Reading a plan's YAML safely (size, node and depth limits; no custom tags; duplicate keys
refused) with a line number for every field, and applying ``--set`` overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from compressor.errors import PlanError

MAX_PLAN_BYTES = 1024 * 1024  # a plan is a page of YAML; a megabyte is already absurd


MAX_NODES = 100_000  # expanded YAML nodes: stops alias ("billion laughs") bombs


MAX_DEPTH = 64  # nesting levels: a plan needs about six; deeper input only exhausts the stack


@dataclass
class SourceMap:
    """Where each field path of the raw plan was written: ``path -> (line, column)``."""

    file: str
    marks: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    overridden: set[tuple] = field(default_factory=set)

    def where(self, loc: tuple) -> str:
        loc = tuple(loc)
        if loc in self.overridden:
            return "--set"
        while loc:
            if loc in self.marks:
                line, col = self.marks[loc]
                return f"{self.file}:{line}:{col}"
            loc = loc[:-1]
        return self.file


class _Budget:
    def __init__(self, limit: int, file: str):
        self.left = limit
        self.file = file

    def spend(self, node: yaml.Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise PlanError(
                f"{self.file}: the plan expands to more than {MAX_NODES:,} YAML nodes "
                "(an alias bomb?)",
                hint="write the plan out without deeply nested aliases",
            )


# The only tags a plan's collections may carry: plain mappings and lists. Anything else
# (!!python/object..., !!set, a custom !tag) is refused by name instead of silently dropped.
_PLAIN_TAGS = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _tag_problem(node: yaml.Node, smap: SourceMap) -> str | None:
    plain = _PLAIN_TAGS.get(type(node))
    if plain is None or node.tag == plain:
        return None
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    return (
        f"{smap.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: YAML tag "
        f"{tag!r} is not allowed (a plan holds plain data: mappings, lists, scalars)"
    )


def _construct(
    node: yaml.Node,
    path: tuple,
    smap: SourceMap,
    budget: _Budget,
    problems: list[str],
    constructor: yaml.constructor.SafeConstructor,
) -> Any:
    budget.spend(node)
    if len(path) > MAX_DEPTH:
        raise PlanError(
            f"{smap.file}:{node.start_mark.line + 1}: the plan nests deeper than {MAX_DEPTH} "
            "levels (a recursive alias?)",
            hint="a plan is a few levels deep: model, stages, their options",
        )
    smap.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    problem = _tag_problem(node, smap)
    if problem is not None:
        problems.append(problem)
        return None
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # resolves YAML merge keys (<<: *defaults)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, (*path, "<key>"), smap, budget, problems, constructor)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(
                    f"{smap.file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
                    f": mapping keys must be plain scalars"
                )
                continue
            if key in result:
                problems.append(
                    f"{smap.file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
                    f": {dotted_path((*path, key))}: key {key!r} appears twice"
                )
            smap.marks[(*path, key)] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            result[key] = _construct(value_node, (*path, key), smap, budget, problems, constructor)
        smap.marks.pop((*path, "<key>"), None)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, i), smap, budget, problems, constructor)
            for i, item in enumerate(node.value)
        ]
    return constructor.construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML safely, recording the line and column of every field path."""
    smap = SourceMap(file)
    if len(text.encode("utf-8", errors="replace")) > MAX_PLAN_BYTES:
        raise PlanError(f"{file}: the plan is larger than 1 MiB", hint="a plan is a short file")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise PlanError(
            f"{file}: the plan nests too deeply to read", hint="a plan is a few levels deep"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise PlanError(
            "the plan is not valid YAML",
            [f"{where}: YAML syntax error: {what}"],
            hint="check indentation, colons and quotes around that line",
        ) from None
    except yaml.YAMLError as e:
        raise PlanError("the plan is not valid YAML", [f"{file}: {e}"]) from None
    if node is None:
        return None, smap
    problems: list[str] = []
    constructor = yaml.constructor.SafeConstructor()
    try:
        data = _construct(node, (), smap, _Budget(MAX_NODES, file), problems, constructor)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise PlanError(
            "the plan uses YAML the loader refuses", [f"{where}: {e.problem}"]
        ) from None
    except RecursionError:
        raise PlanError(f"{file}: the plan nests too deeply") from None
    if problems:
        raise PlanError(f"{len(problems)} problem(s) in {file}", problems)
    return data, smap


def non_finite_problems(data: Any, smap: SourceMap, path: tuple = ()) -> list[str]:
    """``.nan`` / ``.inf`` anywhere in the plan: no field means anything with them, and an
    infinite learning rate or bound only fails much later, mid-run."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{smap.where(path)}: {dotted_path(path)}: must be a finite number (got {data})"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite_problems(v, smap, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite_problems(v, smap, (*path, i))]
    return []


def _parse_key(part: str) -> str | int:
    return int(part) if part.lstrip("-").isdigit() else part


def _parse_value(text: str, item: str) -> Any:
    """A ``--set`` value: YAML (a scalar or flow YAML) with the plan's own limits (no tags,
    no alias bombs or self-referencing aliases); text that is not YAML stays a string."""
    if not text.strip():
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise PlanError(f"--set {item!r}: the value nests too deeply") from None
    if node is None:
        return None
    problems: list[str] = []
    where = SourceMap(f"--set {item!r}")
    try:
        value = _construct(
            node,
            (),
            where,
            _Budget(MAX_NODES, where.file),
            problems,
            yaml.constructor.SafeConstructor(),
        )
    except yaml.constructor.ConstructorError as e:
        raise PlanError(f"--set {item!r}: {e.problem}") from None
    except RecursionError:
        raise PlanError(
            f"--set {item!r}: the value nests too deeply (a recursive alias?)"
        ) from None
    if problems:
        raise PlanError(f"--set {item!r}", [p.split(": ", 1)[-1] for p in problems])
    return value


def apply_overrides(data: dict, overrides: list[str], smap: SourceMap) -> dict:
    """Apply ``--set path=value`` overrides; values are parsed as YAML scalars or flow YAML."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected PATH=VALUE, e.g. stages.0.prune.amount=0.3")
            continue
        path_text, value_text = item.split("=", 1)
        try:
            value = _parse_value(value_text, item)
        except PlanError as e:
            problems.extend(e.problems or [e.message])
            continue
        parts = [_parse_key(p) for p in path_text.strip().split(".") if p]
        if not parts:
            problems.append(f"--set {item!r}: empty field path")
            continue
        node: Any = data
        ok = True
        for depth, part in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or not -len(node) <= part < len(node):
                    problems.append(
                        f"--set {item!r}: {dotted_path(tuple(parts[: depth + 1]))} is not an index "
                        f"of a list of {len(node)} items"
                    )
                    ok = False
                    break
                node = node[part]
            elif isinstance(node, dict):
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            else:
                problems.append(
                    f"--set {item!r}: {dotted_path(tuple(parts[:depth]))} is not a mapping"
                )
                ok = False
                break
        if not ok:
            continue
        last = parts[-1]
        in_list = (
            isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node)
        )
        if in_list or isinstance(node, dict):
            node[last] = value
        else:
            problems.append(f"--set {item!r}: cannot set {last!r} there")
            continue
        smap.overridden.add(tuple(parts))
    if problems:
        raise PlanError("bad --set override(s)", problems)
    return data


def dotted_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(plan)"
