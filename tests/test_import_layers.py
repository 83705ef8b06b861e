"""The static import graph of src/strata: no cycle, and no import that goes up a layer.

Layers, bottom to top; a module may import its own layer or a lower one:

* 0, resolution of ids: ``strata.errors``, ``strata.hub`` (imports nothing of ours but errors).
* 1, building blocks: ``strata.data.*``, ``strata.models.*``, ``strata.evaluation.*`` except ``evaluation.cli``.
* 2, recipes: ``strata.training.*``, ``strata.experiments.*``.
* 3, command-line glue: ``strata`` (the package ``__init__``), ``strata.cli``, ``strata.cli_datasets``
  (the registry's table and ``show``), ``strata.cli_env`` (``strata env``), ``strata.config``, ``strata.config_file``, ``strata.flag_aliases``,
  ``strata.flag_usage``, ``strata.evaluation.cli``, ``strata.main``, ``strata.benchmarks`` (``strata bench``:
  finds and runs the scripts in benchmarks/), ``strata.experiments.compare`` (``strata compare``: its parser
  and main, which parse each arm's flags exactly as ``strata train`` does), ``strata.experiments.compare_worker``
  (one run of ``strata compare --jobs N``: ``strata train`` then ``strata eval``); the comparison's parts, arms, floor,
  results, statistics and diagnostics, are recipes in layer 2). Configuration lives here and is passed down
  as values.

A module that is in none of these is reported: a new one has to be given a layer here.

Every import counts, those inside functions too (a lazy import still ties the two modules together, it
only hides the cycle until the call); only the body of ``if TYPE_CHECKING:`` is skipped, because it never
runs. ``import strata.a.b`` and ``from strata.a import b`` are edges to ``strata.a.b`` alone, not to the
packages above it (Python runs their ``__init__`` too, but ``strata/__init__`` would then sit under
everything; ``from strata.a import name`` where ``name`` is not a module is an edge to ``strata.a``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYER_NAMES = {0: "ids (hub/errors)", 1: "data/models/evaluation", 2: "training/experiments", 3: "cli/config"}
_EXACT = {
    "strata.errors": 0,
    "strata.hub": 0,
    "strata": 3,
    "strata.cli": 3,
    "strata.cli_datasets": 3,
    "strata.cli_env": 3,
    "strata.config": 3,
    "strata.config_file": 3,
    "strata.flag_aliases": 3,
    "strata.flag_usage": 3,
    "strata.evaluation.cli": 3,
    "strata.main": 3,
    "strata.benchmarks": 3,
    "strata.experiments.compare": 3,
    "strata.experiments.compare_worker": 3,
}
_PACKAGES = {"strata.data": 1, "strata.models": 1, "strata.evaluation": 1, "strata.training": 2,
             "strata.experiments": 2}


def layer_of(module: str) -> int | None:
    """The layer of a module name, None when it has none."""
    if module in _EXACT:
        return _EXACT[module]
    for package, layer in _PACKAGES.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, classes, try), skipping ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules of ours that one import statement depends on."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    out = []
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            out.append(f"{base}.{alias.name}")
        elif base in known:
            out.append(base)
    return out


def build_graph(root: Path, top: str = "strata") -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: line of its first import}, from the sources under ``root/top``."""
    files = {_module_name(path, root): path for path in sorted((root / top).rglob("*.py"))}
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target != module:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is one or more cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{component} is not strongly connected")


def cycle_report(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per import cycle: a concrete cycle with the import lines, and every module tangled in it."""
    lines = []
    for component in strongly_connected(graph):
        cycle = one_cycle(graph, component)
        steps = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
        lines.append(f"cycle {steps} -> {cycle[0]}; all of {{{', '.join(component)}}} import each other")
    return lines


def upward_report(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per import from a lower layer to a higher one, and per module without a layer."""
    lines = [f"{module} has no layer: add it to tests/test_import_layers.py" for module in sorted(graph)
             if layer_of(module) is None]
    for module in sorted(graph):
        low = layer_of(module)
        for target, line in sorted(graph[module].items()):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                lines.append(f"{module}:{line} imports {target}: layer {low} ({LAYER_NAMES[low]}) up to "
                             f"{high} ({LAYER_NAMES[high]})")
    return lines


# ---------------------------------------------------------------------------- the checker checks itself
def test_graph_sees_function_level_and_relative_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "strata"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "hub.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from strata.config import X\n"
        "def f():\n    from strata.data import registry\n"
    )
    (pkg / "config.py").write_text("import json\n")
    (pkg / "data" / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "data" / "registry.py").write_text("from .. import hub\nfrom . import VALUE\nimport strata.config\n")
    graph = build_graph(tmp_path)
    assert graph["strata.hub"] == {"strata.data.registry": 5}  # lazy counted; TYPE_CHECKING skipped
    assert graph["strata.data.registry"] == {"strata.hub": 1, "strata.data": 2, "strata.config": 3}
    assert graph["strata.config"] == {}


def test_checker_reports_a_cycle_and_an_upward_edge() -> None:
    graph = {
        "strata.hub": {"strata.data.registry": 5},
        "strata.data.registry": {"strata.data.formatting": 3},
        "strata.data.formatting": {"strata.hub": 7, "strata.errors": 2},
        "strata.errors": {},
        "strata.data.pipeline": {"strata.config": 14},
        "strata.config": {"strata.data.pipeline": 40},
        "strata.oddity": {},
    }
    cycles = cycle_report(graph)
    assert len(cycles) == 2
    assert cycles[0].startswith("cycle strata.config (line 40) -> strata.data.pipeline (line 14) -> strata.config")
    assert "strata.data.formatting (line 7) -> strata.hub (line 5) -> strata.data.registry (line 3)" in cycles[1]
    upward = upward_report(graph)
    assert upward == [
        "strata.oddity has no layer: add it to tests/test_import_layers.py",
        "strata.data.pipeline:14 imports strata.config: layer 1 (data/models/evaluation) up to 3 (cli/config)",
        "strata.hub:5 imports strata.data.registry: layer 0 (ids (hub/errors)) up to 1 (data/models/evaluation)",
    ]
    assert cycle_report({"strata.hub": {"strata.errors": 1}, "strata.errors": {}}) == []


# ---------------------------------------------------------------------------- the real tree
def test_no_import_cycle_in_strata() -> None:
    graph = build_graph(SRC)
    assert len(graph) > 50  # the walk found the package
    problems = cycle_report(graph)
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_no_import_goes_up_a_layer() -> None:
    problems = upward_report(build_graph(SRC))
    assert not problems, "imports against the layers (docstring of this file):\n" + "\n".join(problems)
