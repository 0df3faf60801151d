"""The layers import downwards only: protocol knows nothing of training, workers nothing of the job, the
coordinator nothing of the benchmarks, the command line or the test peer above it; and no modules import each
other in a circle, not even for type hints."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

ABOVE = {  # folder -> the dni subpackages its modules must not import
    "protocol": ("dni.workers", "dni.coordinator", "dni.bench", "dni.testing", "dni.launch", "dni.cli"),
    "workers": ("dni.coordinator", "dni.bench", "dni.testing", "dni.launch", "dni.cli"),
    "coordinator": ("dni.bench", "dni.testing", "dni.cli"),
}
FOLDERS = {"protocol": "dni.protocol", "workers": "dni.workers", "coordinator": "dni.coordinator", "dni": "dni"}


def imported(path: Path, top_level_only: bool = False) -> set[str]:
    """The dotted names a module imports (with `top_level_only`, those it imports on loading, type-only included)."""
    tree = ast.parse(path.read_text())
    nodes = _loading(tree.body) if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _loading(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run when a module loads, the bodies of its top-level `if`s (TYPE_CHECKING) and `try`s included."""
    statements: list[ast.stmt] = []
    for node in body:
        statements.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            statements += _loading(node.body + node.orelse + getattr(node, "finalbody", []))
    return statements


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO)
    parts = [FOLDERS[relative.parts[0]], *relative.parts[1:-1]]
    return ".".join(parts if path.stem == "__init__" else [*parts, path.stem])


def sources() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ABOVE))
def test_no_module_imports_a_layer_above_its_own(folder):
    offending = {f"{path.relative_to(REPO)}: {name}" for path in sorted((REPO / folder).rglob("*.py"))
                 for name in imported(path) if name.startswith(ABOVE[folder])}
    assert offending == set()


def test_no_modules_import_each_other_in_a_circle():
    modules = {module_name(path): path for path in sources()}
    graph = {name: {other for other in imported(path, top_level_only=True) if other in modules and other != name}
             for name, path in modules.items()}
    assert find_cycle(graph) is None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports, if the graph has one."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for other in sorted(graph[name]):
            if (cycle := visit(other, [*path, name])) is not None:
                return cycle
        done.add(name)
        return None
    return next((cycle for name in sorted(graph) if (cycle := visit(name, [])) is not None), None)


def test_a_circle_is_found_where_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
