"""Bad job files and flags fail before any worker starts, as `dni run` meets them (the real command, real data)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dni import run_job
from dni.errors import ConfigError
from tests.conftest import mlp_stages, small_job

pytestmark = pytest.mark.e2e


def test_unknown_stage_kind_fails_before_any_worker_starts(tmp_path, data_root):
    stages = mlp_stages()
    stages[1] = {"kind": "transformer_block", "features": 4}
    job = small_job(data_root, tmp_path, stages=stages)
    with pytest.raises(ConfigError, match="stage 1: unknown stage kind 'transformer_block'; known: conv_bn_relu"):
        run_job(job, show_progress=False)
    assert not list(tmp_path.iterdir()), "no run folder, no workers"


def test_cli_reports_a_bad_job_file_and_exits_2(tmp_path):
    job_file = tmp_path / "bad.toml"
    job_file.write_text('dataset = "mnist"\nmode = "sg"\nbatch_size = -4\n[[stages]]\nkind = "linear"\nfeatures = 10\n[[stages]]\nkind = "linear"\nfeatures = 10\n')
    result = subprocess.run([sys.executable, "-m", "dni", "run", str(job_file)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "batch_size must be at least 1" in result.stderr
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist", "--mode", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr


def test_a_bad_flag_is_named_as_the_flag_not_as_the_job_file_it_overrides():
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist", "--iterations", "-5"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--iterations must not be negative, got -5" in result.stderr and "mnist_fcn.toml" not in result.stderr


def test_dni_run_says_which_parameter_has_the_wrong_type_and_exits_2(tmp_path, data_root):
    job_file = tmp_path / "strings.toml"
    job_file.write_text('dataset = "mnist"\nmode = "sg"\n[[stages]]\nkind = "linear_bn_relu"\nfeatures = "128"\n'
                        '[[stages]]\nkind = "linear"\nfeatures = 10\n')
    result = subprocess.run([sys.executable, "-m", "dni", "run", str(job_file), "--data-root", str(data_root),
                             "--no-download", "--results", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.rstrip().endswith("ERROR stage 0 (linear_bn_relu): features must be int, got '128' (str)")
    assert "does not fit" not in result.stderr and not (tmp_path / "runs").exists()
