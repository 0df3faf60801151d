"""The layers import downwards only: protocol knows nothing of training, workers nothing of the job,
the coordinator nothing of the benchmarks or the test peer above it."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

ABOVE = {  # folder -> the dni subpackages its modules must not import
    "protocol": ("dni.workers", "dni.coordinator", "dni.bench", "dni.testing", "dni.launch"),
    "workers": ("dni.coordinator", "dni.bench", "dni.testing", "dni.launch"),
    "coordinator": ("dni.bench", "dni.testing"),
}
ALLOWED = {"coordinator/cli.py": ("dni.bench",)}  # the `dni` command hands `dni bench` to it, imported when asked for


def imported(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(ABOVE))
def test_no_module_imports_a_layer_above_its_own(folder):
    offending = {f"{path.name}: {name}" for path in sorted((REPO / folder).glob("*.py")) for name in imported(path)
                 if name.startswith(ABOVE[folder]) and not name.startswith(ALLOWED.get(f"{folder}/{path.name}", ()))}
    assert offending == set()
