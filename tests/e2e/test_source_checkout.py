"""A source checkout imports as dni without installation (what travels to a GPU machine is the working tree)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e  # it starts a Python process

WITHOUT_INSTALLATION = """
import sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in getattr(finder, "__module__", "")]
import dni.coordinator.train.run, dni.protocol.codec, dni.workers.loop.worker
print(dni.protocol.codec.__file__, dni.workers.loop.worker.__file__, dni.coordinator.train.run.__file__)
import importlib.util
print(importlib.util.find_spec("dni.tests"), importlib.util.find_spec("dni.docker"))
"""


def test_the_three_folders_import_under_dni_from_a_checkout_on_the_python_path(tmp_path):
    imported = subprocess.run([sys.executable, "-c", WITHOUT_INSTALLATION], cwd=tmp_path, env={"PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert imported == [str(REPO / "protocol" / "codec.py"), str(REPO / "workers" / "loop" / "worker.py"), str(REPO / "coordinator" / "train" / "run.py"),
                        "None", "None"], "only the three named folders import as dni.X"
