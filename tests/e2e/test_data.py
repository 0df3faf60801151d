"""`dni run` with a data root that does not exist: exit 2, dni's advice, nothing created; and the MNIST job on
another dataset of its shape by --dataset (the real command)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.unit.test_dataset import write_idx

pytestmark = pytest.mark.e2e


def test_dni_run_with_a_data_root_that_does_not_exist_exits_2_and_creates_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist", "--data-root", str(tmp_path / "nonexistent"),
                             "--results", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert f"ERROR data root {tmp_path / 'nonexistent'} (from --data-root or data_root in the job file) does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir()), "no data folder, no run folder"


def test_the_mnist_job_runs_on_kmnist_by_flag_with_the_input_shape_from_the_data(tmp_path):
    write_idx(tmp_path / "data", "KMNIST", train=64, test=16)
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist-smoke", "--dataset", "kmnist", "--data-root",
                             str(tmp_path / "data"), "--no-download", "--iterations", "3", "--threads", "1",
                             "--results", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert (summary["status"], summary["dataset"], summary["steps"]) == ("complete", "kmnist", 3)
