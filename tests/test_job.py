"""Bad job files and flags fail before any worker starts, with errors that name the problem."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from torch import nn

from dni.coordinator.job import load_job
from dni.coordinator.run import run_job
from dni.coordinator.shapes import check_stages
from tests.conftest import mlp_stages, small_job
from dni.errors import ConfigError
from dni.spec import Mode
from dni.spec import StageSpec, SynthesizerSpec
from dni.workers.build import build_stage
from dni.workers.registry import STAGE_ARGUMENTS, check_params


def test_shortcuts_load_the_reference_jobs():
    job = load_job("mnist", {"mode": "cdni", "lr": 1e-4})
    assert (job.dataset, job.mode.value, job.batch_size, job.iterations) == ("mnist", "cdni", 256, 25_000)
    assert job.optimizer.lr == 1e-4
    assert [stage.kind for stage in job.stages] == ["linear_bn_relu", "linear_bn_relu", "linear"]
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
    result = subprocess.run([sys.executable, "-m", "dni", "run", str(job_file)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "batch_size must be at least 1" in result.stderr
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist", "--mode", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr


def annotated(input_shape: tuple[int, ...], features: int, scale: float = 1.0, pool: str = "none", bias: bool = True) -> nn.Module:
    return nn.Identity()


def unannotated(input_shape, features, scale=1.0):
    return nn.Identity()


def open_ended(input_shape: tuple[int, ...], features: int, **options: Any) -> nn.Module:
    return nn.Identity()


@pytest.mark.parametrize("params, message", [
    ({"features": "128"}, "features must be int, got '128' (str)"),
    ({"features": True}, "features must be int, got True (bool)"),
    ({"features": 4.0}, "features must be int, got 4.0 (float)"),
    ({"features": 4, "scale": True}, "scale must be float, got True (bool)"),
    ({"features": 4, "scale": "0.5"}, "scale must be float, got '0.5' (str)"),
    ({"features": 4, "pool": 3}, "pool must be str, got 3 (int)"),
    ({"features": 4, "bias": 1}, "bias must be bool, got 1 (int)"),
    ({"features": 4, "width": 8}, "unknown parameter 'width'; accepted: features, scale, pool, bias"),
    ({"features": 4, "width": 8, "input_shape": [3]}, "unknown parameters 'width', 'input_shape'; accepted: features, scale, pool, bias"),
    ({"scale": 2.0}, "missing parameter 'features'; accepted: features, scale, pool, bias"),
])
def test_params_that_do_not_fit_the_builder_signature_are_named(params, message):
    with pytest.raises(ConfigError) as error:
        check_params(annotated, params, "stage 3 (annotated)", STAGE_ARGUMENTS)
    assert str(error.value) == f"stage 3 (annotated): {message}"


def test_params_that_fit_pass_and_unannotated_builders_are_not_type_checked():
    check_params(annotated, {"features": 4, "scale": 1, "pool": "max", "bias": False}, "stage 0", STAGE_ARGUMENTS)  # an int is a float
    check_params(unannotated, {"features": "128", "scale": "big"}, "stage 0", STAGE_ARGUMENTS)
    check_params(open_ended, {"features": 4, "anything": "goes"}, "stage 0", STAGE_ARGUMENTS)
    with pytest.raises(ConfigError, match="features must be int"):
        check_params(open_ended, {"features": "4"}, "stage 0", STAGE_ARGUMENTS)
    with pytest.raises(ConfigError, match="unknown parameter 'width'; accepted: features, scale"):
        check_params(unannotated, {"features": 4, "width": 1}, "stage 0", STAGE_ARGUMENTS)


def test_built_in_stage_and_synthesizer_params_are_checked_before_building():
    with pytest.raises(ConfigError) as error:
        build_stage(StageSpec("linear_bn_relu", {"features": "128"}), index=0, input_shape=(1, 28, 28), mode=Mode.SG,
                    num_classes=10, seed=0, is_last=False)
    assert str(error.value) == "stage 0 (linear_bn_relu): features must be int, got '128' (str)"
    spec = StageSpec("linear_bn_relu", {"features": 8}, SynthesizerSpec("mlp", {"hidden": "1024"}))
    with pytest.raises(ConfigError) as error:  # a class builder: its __init__'s signature, past the four arguments dni passes
        build_stage(spec, index=1, input_shape=(16,), mode=Mode.SG, num_classes=10, seed=0, is_last=False)
    assert str(error.value) == "stage 1 (linear_bn_relu), synthesizer mlp: hidden must be int, got '1024' (str)"
    assert build_stage(spec, index=1, input_shape=(16,), mode=Mode.BACKPROP, num_classes=10, seed=0,
                       is_last=False).output_shape == (8,), "no synthesizer in backprop"


def test_dni_run_says_which_parameter_has_the_wrong_type_and_exits_2(tmp_path, data_root):
    job_file = tmp_path / "strings.toml"
    job_file.write_text('dataset = "mnist"\nmode = "sg"\n[[stages]]\nkind = "linear_bn_relu"\nfeatures = "128"\n'
                        '[[stages]]\nkind = "linear"\nfeatures = 10\n')
    result = subprocess.run([sys.executable, "-m", "dni", "run", str(job_file), "--data-root", str(data_root),
                             "--no-download", "--results", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.rstrip().endswith("ERROR stage 0 (linear_bn_relu): features must be int, got '128' (str)")
    assert "does not fit" not in result.stderr and not (tmp_path / "runs").exists()
