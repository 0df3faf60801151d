"""coordinator/jobs/shapes.py: every stage is built once up front; a stage that does not fit fails naming the stage and the shapes."""
from __future__ import annotations

import pytest

from dni import load_job
from dni.coordinator.jobs.shapes import check_stages
from dni.errors import ConfigError
from tests.conftest import mlp_stages, small_job


def test_the_reference_jobs_chain_their_shapes():
    assert check_stages(load_job("mnist"), (1, 28, 28), 10) == [(256,), (256,), (10,)]
    assert check_stages(load_job("cifar10"), (3, 32, 32), 10) == [(128, 10, 10), (128, 3, 3), (10,)]


def test_stage_that_does_not_fit_its_input_names_the_stage_and_shapes(tmp_path):
    stages = mlp_stages()
    stages[1] = {"kind": "conv_bn_relu", "channels": 8}
    job = small_job(tmp_path, tmp_path, stages=stages)
    with pytest.raises(ConfigError, match=r"^stage 1 \(conv_bn_relu \{'channels': 8\}, synthesizer mlp\) does not fit its input "
                                          r"of shape \[64\] \(the output of stage 0\): conv_bn_relu needs \(channels, height, width\)"):
        check_stages(job, (1, 28, 28), 10)


def test_last_stage_must_produce_one_logit_per_class(tmp_path):
    stages = mlp_stages()
    stages[2] = {"kind": "linear", "features": 7}
    with pytest.raises(ConfigError, match=r"^the last stage \(linear\) outputs \[7\], but mnist has 10 classes$"):
        check_stages(small_job(tmp_path, tmp_path, stages=stages), (1, 28, 28), 10)


def test_an_unknown_stage_kind_names_the_stage_and_the_known_kinds(tmp_path):
    stages = mlp_stages()
    stages[1] = {"kind": "transformer_block", "features": 4}
    with pytest.raises(ConfigError, match="^stage 1: unknown stage kind 'transformer_block'; known: conv_bn_relu, linear, linear_bn_relu"):
        check_stages(small_job(tmp_path, tmp_path, stages=stages), (1, 28, 28), 10)
