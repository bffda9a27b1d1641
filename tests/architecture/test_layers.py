"""The layers contract of ``compressor/``: each layer imports only the layers below it, no
import circles (function-level imports included), and imports written inside functions only
where they defer a heavy or optional package, each saying why.

``make lint`` checks the same layers with import-linter (``[tool.importlinter]`` in
pyproject.toml); this test reads the source itself, so it also sees every function-level and
``TYPE_CHECKING`` import, and proves on deliberately bad graphs that it would fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.architecture.import_graph import build_graph, find_cycles, upward_imports

PACKAGE = Path(__file__).resolve().parents[2] / "compressor"

# Top first. A module may import its own layer and the layers below it, never above.
LEAVES = [
    "compressor.errors",
    "compressor.version",
    "compressor.safe_import",
    "compressor.patterns",
    "compressor.spec",
    "compressor.forward",
    "compressor.counting",
    "compressor.rebuildable",
]
LAYERS = [
    ["compressor.run"],
    ["compressor.measure"],
    ["compressor.plan"],
    ["compressor.stages"],
    ["compressor.training"],
    ["compressor.formats"],
    ["compressor.graph"],
    ["compressor.data"],
    ["compressor.files"],
    LEAVES,
]
# The package root is the public facade (``compressor.load``): above every layer.
FACADE = "compressor"

# Function-level imports of the package's own modules, and why each cannot be at the top.
OWN_DEFERRED = {
    "compressor": "the facade resolves compressor.load on first use, so importing any "
    "submodule does not load every layer",
    "compressor.measure.memory_probe": "the probe process imports only what its runtime "
    "needs; the model loaders import torch, which onnxruntime probes must not load",
}
# Third-party (or large) packages a function may import late, because they are optional
# extras or slow to import and needed by few calls.
DEFERRABLE = {
    "transformers",  # extra 'hf'
    "tokenizers",  # extra 'hf'
    "wordfreq",  # extra 'text'
    "sklearn",  # extra 'samples'
    "matplotlib",  # ~0.5 s to import, only for report.png
    "pydoc_data",  # a 1 MB data module, only for builtin:pydoc
    "fcntl",  # POSIX only
    "onnxruntime",  # memory probe: a torch probe must not load it
    "torch",  # memory probe: an onnxruntime probe must not load it
}
REASON = re.compile(r"#.*\b(deferred|optional|extra|only)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def graph():
    return build_graph(PACKAGE)


def test_every_module_of_the_package_is_in_a_layer(graph):
    from tests.architecture.import_graph import layer_of

    stray = sorted(m for m in graph.modules if m != FACADE and layer_of(m, LAYERS) is None)
    assert stray == [], f"modules in no layer (add them to LAYERS or move them): {stray}"


def test_no_module_imports_a_layer_above_its_own(graph):
    bad = upward_imports(graph.edges, LAYERS, exempt=[FACADE])
    assert bad == [], "upward imports:\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_zero_import_circles_function_level_imports_included(graph):
    cycles = find_cycles(graph.edges)
    print(f"import circles: {len(cycles)} over {len(graph.modules)} modules")
    assert cycles == []


def test_function_level_imports_only_defer_heavy_or_optional_packages_and_say_why(graph):
    problems = []
    for module, line, target, context in graph.function_level:
        top = target.split(".")[0]
        if top == "compressor":
            if module not in OWN_DEFERRED:
                problems.append(f"{module}:{line} imports {target} inside a function")
        elif top not in DEFERRABLE:
            problems.append(f"{module}:{line} defers {target}, which is neither heavy nor optional")
        if not REASON.search(context):
            problems.append(f"{module}:{line} defers {target} without a one-line reason")
    print(f"function-level imports: {len(graph.function_level)}")
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------ the contract can fail


def test_the_check_reports_an_upward_import_in_a_deliberately_bad_graph():
    layers = [["pkg.top"], ["pkg.mid"], ["pkg.low"]]
    good = {"pkg.top.a": {"pkg.mid.b"}, "pkg.mid.b": {"pkg.low.c"}, "pkg.low.c": set()}
    assert upward_imports(good, layers) == []
    bad = {**good, "pkg.low.c": {"pkg.top.a"}}
    assert upward_imports(bad, layers) == [("pkg.low.c", "pkg.top.a")]
    assert find_cycles(bad) == [["pkg.low.c", "pkg.mid.b", "pkg.top.a"]]


def test_a_function_level_upward_import_in_real_files_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("top", "low"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "top" / "runner.py").write_text("from pkg.low import util\n")
    # Hidden inside a function, as the old circles were.
    (pkg / "low" / "util.py").write_text(
        "def helper():\n    from pkg.top.runner import util\n    return util\n"
    )
    graph = build_graph(pkg)
    assert graph.edges["pkg.top.runner"] == {"pkg.low.util"}
    assert graph.edges["pkg.low.util"] == {"pkg.top.runner"}
    assert [(m, t) for m, _, t, _ in graph.function_level] == [("pkg.low.util", "pkg.top.runner")]
    layers = [["pkg.top"], ["pkg.low"]]
    assert upward_imports(graph.edges, layers) == [("pkg.low.util", "pkg.top.runner")]
    assert find_cycles(graph.edges) == [["pkg.low.util", "pkg.top.runner"]]
