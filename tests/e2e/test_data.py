"""`dni run` with a data root that does not exist: exit 2, dni's advice, nothing created (the real command)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_dni_run_with_a_data_root_that_does_not_exist_exits_2_and_creates_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist", "--data-root", str(tmp_path / "nonexistent"),
                             "--results", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert f"ERROR data root {tmp_path / 'nonexistent'} (from --data-root or data_root in the job file) does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir()), "no data folder, no run folder"
