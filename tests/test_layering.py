"""The package's import graph: no cycles, nothing imports the CLI, and the bottom layers import nothing above them.

Every import is counted, including those inside functions (an import that only dodges a cycle is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import losam_peft

PACKAGE = "losam_peft"
ROOT = Path(losam_peft.__file__).parent

#: modules with no imports from the package besides each other: anything may import them
LEAVES = {"losam_peft.errors", "losam_peft.constants", "losam_peft.labels", "losam_peft.validation", "losam_peft.visualization"}
#: the bottom layers and what they may import (besides themselves and the leaves)
BOTTOM = {
    "losam_peft.data": {"losam_peft.image_processing_losam", "losam_peft.atomic"},
    "losam_peft.metrics": set(),
    "losam_peft.tuner": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py") if "evaluate_metric" not in p.parts}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if not target.startswith(PACKAGE):
                    continue
                found = known(target)
                if found and found != name:
                    graph[name].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert _cycles(graph) == []


def test_nothing_outside_the_cli_imports_it():
    offenders = {
        (name, target)
        for name, targets in import_graph().items()
        if not name.startswith("losam_peft.cli")
        for target in targets
        if target.startswith("losam_peft.cli")
    }
    assert offenders == set()


def test_bottom_layers_import_nothing_above_them():
    offenders = []
    for name, targets in import_graph().items():
        for layer, allowed in BOTTOM.items():
            if name == layer or name.startswith(layer + "."):
                for target in targets:
                    inside = target == layer or target.startswith(layer + ".")
                    if not (inside or target in LEAVES or target in allowed):
                        offenders.append((name, target))
    assert offenders == []


def test_leaves_import_no_other_package_module():
    graph = import_graph()
    for leaf in LEAVES:
        assert graph.get(leaf, set()) <= LEAVES, (leaf, graph.get(leaf))  # leaves import only leaves


def test_the_graph_sees_imports_inside_functions(tmp_path):
    # the walker itself: an import inside a function body is an edge
    source = "def f():\n    from .errors import LoSamError\n"
    tree = ast.parse(source)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _resolve("losam_peft.demo", False, nodes[0]) == "losam_peft.errors"
