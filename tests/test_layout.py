"""The package's shape: no import cycle between blastscan modules, no module reaching into another module's
private names, no module importing a layer above its own, and small modules and functions (checked on the
source with ``ast``, so lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blastscan"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules: set[str]):
    """(imported module, names taken from it) for every blastscan import in ``path``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("blastscan"):
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("blastscan"):
            names = [a.name for a in node.names]
            # "from blastscan.features import base" imports the module blastscan.features.base
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
            yield from ((s, []) for s in subs)
            yield node.module, [n for n in names if f"{node.module}.{n}" not in modules]


def _graph():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {m: set() for m in modules}
    private = []
    for mod, path in files.items():
        for target, names in _imports(path, modules):
            if target in modules and target != mod:
                # a package's __init__ importing its own submodules is how it re-exports them, not a cycle
                if not (path.name == "__init__.py" and target.startswith(mod + ".")):
                    graph[mod].add(target)
            private += [(mod, target, n) for n in names if n.startswith("_") and n != "__version__"]
    return graph, private


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_blastscan_modules():
    graph, _ = _graph()
    assert len(graph) > 30  # the walk found the package
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    assert private == []


def test_modules_and_functions_stay_small():
    long_modules = [(p.name, n) for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 520]
    assert long_modules == []
    long_functions = []
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 110:
                    long_functions.append((f"{_module_name(p)}.{node.name}", n))
    assert long_functions == []


# Data flows downhill: each package or module of the package in one layer, top first (README "Code layout").
# A module may import its own layer and the layers below it, never one above. The package's root
# (``blastscan/__init__.py``: ``__version__`` and the ``load_bundle`` shortcut) stands outside the layers.
LAYERS = (
    ("blastscan.cli", "blastscan.cli_options"),
    ("blastscan.pipelines",),
    ("blastscan.report", "blastscan.view", "blastscan.bundle"),
    ("blastscan.features", "blastscan.classifiers", "blastscan.evaluation"),
    ("blastscan.dataset", "blastscan.registry", "blastscan._io", "blastscan.errors", "blastscan.options",
     "blastscan.parallel", "blastscan.provenance", "blastscan._tf", "blastscan.sample"),
)


def _layer(module: str) -> int:
    """The index in LAYERS of the longest prefix naming ``module`` or a package above it."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[0]


def _upward(graph) -> list[tuple[str, str]]:
    return sorted((mod, target) for mod, targets in graph.items() for target in targets
                  if "blastscan" not in (mod, target) and _layer(target) < _layer(mod))


def test_nothing_imports_a_layer_above_it():
    graph, _ = _graph()
    assert len({_layer(m) for m in graph if m != "blastscan"}) == len(LAYERS)  # every layer has modules
    assert _upward(graph) == []


def test_layer_check_finds_an_upward_import():
    graph = {"blastscan.features.store": {"blastscan.pipelines.score", "blastscan._io"},
             "blastscan.pipelines.score": {"blastscan.bundle.core", "blastscan.pipelines.extract"},
             "blastscan.report.results": {"blastscan.view.server"}}
    assert _upward(graph) == [("blastscan.features.store", "blastscan.pipelines.score")]
