"""The library's module structure: no import cycles, no hidden imports, no reaching into
another object's private members from the scheduling code that only reads the state."""

from __future__ import annotations

import ast
from pathlib import Path

import orchestrator_core

ROOT = Path(orchestrator_core.__file__).parent
READERS = [
    "scheduler",
    "cycle",
    "dispatching",
    "placing",
    "gpu_search",
    "validation",
    "ctx",
    "admission",
    "fleet_views",
    "snapshot",
    "state_reads",
]
"""Scheduling modules that read the state through public APIs only."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, typing: bool = True) -> tuple[set[str], list[int]]:
    """Modules ``path`` imports (with ``typing=False``, at run time only: ``if
    TYPE_CHECKING`` blocks excluded), and the lines of imports made inside functions."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    local: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            tc = isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING")
            if tc and not typing:
                for stmt in child.orelse:
                    visit(stmt, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                if in_function:
                    local.append(child.lineno)
                if isinstance(child, ast.Import):
                    found.update(a.name for a in child.names)
                elif child.module:
                    found.add(child.module)
                    found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return found, local


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports(p)[0] & set(paths) - {name} for name, p in paths.items()}


def test_orchestrator_core_has_no_import_cycle_not_even_for_type_annotations() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    assert cycles == []


def test_the_scheduling_package_imports_nothing_inside_functions() -> None:
    local = {
        module_name(p): lines
        for p in (ROOT / "scheduling").glob("*.py")
        if (lines := imports(p, typing=False)[1])
    }
    assert local == {}


def test_state_readers_touch_no_private_member_of_another_object() -> None:
    found: list[str] = []
    for name in READERS:
        path = ROOT / "scheduling" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{name}.py:{node.lineno}: {ast.unparse(node)}")
    assert found == []
