"""Bad job files and flags fail before any worker starts, with errors that name the problem."""
from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.job import load_job
from coordinator.run import run_job
from coordinator.shapes import check_stages
from tests.conftest import mlp_stages, small_job
from workers.spec import ConfigError


def test_shortcuts_load_the_reference_jobs():
    job = load_job("mnist", {"mode": "cdni", "lr": 1e-4})
    assert (job.dataset, job.mode.value, job.batch_size, job.iterations) == ("mnist", "cdni", 256, 25_000)
    assert job.optimizer.lr == 1e-4
    assert [entry.spec.kind for entry in job.stages] == ["linear_bn_relu", "linear_bn_relu", "linear"]
    assert check_stages(job, (1, 28, 28), 10) == [(256,), (256,), (10,)]
    cifar = load_job("cifar10")
    assert check_stages(cifar, (3, 32, 32), 10) == [(128, 10, 10), (128, 3, 3), (10,)]


@pytest.mark.parametrize("change, message", [
    ({"mode": "fast"}, "mode 'fast' is not one of backprop, sg, cdni, sl, no_bprop"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"batch_size": "big"}, "batch_size must be int"),
    ({"dataset": "imagenet"}, "dataset 'imagenet' is not one of"),
    ({"colour": "red"}, "unknown setting 'colour'"),
    ({"optimizer": {"name": "lbfgs"}}, "optimizer.name 'lbfgs'"),
    ({"optimizer": {"lr": -1.0}}, "optimizer.lr must be a positive number"),
    ({"stages": mlp_stages()[:1]}, "at least two stages"),
    ({"stages": [{"features": 3}, *mlp_stages()]}, "stages\\[0\\] needs a 'kind'"),
])
def test_bad_settings_name_the_field(change, message, tmp_path, data_root):
    with pytest.raises(ConfigError, match=message):
        small_job(data_root, tmp_path, **change)


def test_unknown_stage_kind_fails_before_any_worker_starts(tmp_path, data_root):
    stages = mlp_stages()
    stages[1] = {"kind": "transformer_block", "features": 4}
    job = small_job(data_root, tmp_path, stages=stages)
    with pytest.raises(ConfigError, match="stage 1: unknown stage kind 'transformer_block'; known: balanced, conv_bn_relu"):
        run_job(job, show_progress=False)
    assert not list(tmp_path.iterdir()), "no run folder, no workers"


def test_stage_that_does_not_fit_its_input_names_the_stage_and_shapes(tmp_path, data_root):
    stages = mlp_stages()
    stages[1] = {"kind": "conv_bn_relu", "channels": 8}
    job = small_job(data_root, tmp_path, stages=stages)
    with pytest.raises(ConfigError, match=r"stage 1 \(conv_bn_relu .*input of shape \[64\].*needs \(channels, height, width\)"):
        check_stages(job, (1, 28, 28), 10)


def test_last_stage_must_produce_one_logit_per_class(tmp_path, data_root):
    stages = mlp_stages()
    stages[2] = {"kind": "linear", "features": 7}
    with pytest.raises(ConfigError, match="outputs \\[7\\], but mnist has 10 classes"):
        check_stages(small_job(data_root, tmp_path, stages=stages), (1, 28, 28), 10)


def test_cli_reports_a_bad_job_file_and_exits_2(tmp_path):
    job_file = tmp_path / "bad.toml"
    job_file.write_text('dataset = "mnist"\nmode = "sg"\nbatch_size = -4\n[[stages]]\nkind = "linear"\nfeatures = 10\n[[stages]]\nkind = "linear"\nfeatures = 10\n')
    result = subprocess.run([sys.executable, "-m", "coordinator", "run", str(job_file)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "batch_size must be at least 1" in result.stderr
    result = subprocess.run([sys.executable, "-m", "coordinator", "run", "mnist", "--mode", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
