"""workers/stage/losses.py and the job's `loss` setting: the registry, the check, the losses in nats and when a prediction is
right, and the last stage's results by hand."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import nn

from dni.coordinator.cli import OVERRIDES
from dni.coordinator.jobs.job import JOB_KEYS, job_as_table, job_from_table
from dni.errors import ConfigError
from dni.spec import LOSS_NAMES, Mode, OptimizerSpec, StageAssignment, StageSpec, check_loss
from dni.workers.build.builder import assigned_stage
from dni.workers.stage.compute import EvalResult, StageCompute, score_meta
from dni.workers.stage.losses import BUILTIN_LOSSES, Loss, binary_bits, bits_right, class_right, per_example_losses, resolve_loss
from dni.workers.build.registry import UnknownBuilderError
from dni.workers.stage.timing import Timeline
from dni.testing import chain_edges

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
LABELS = torch.tensor([0, 1])
# softmax cross-entropy per example: log(sum(exp(logits))) - logits[label]
CROSS_ENTROPY = [math.log(math.e ** 2 + math.e + 1) - 2, math.log(2 + math.e ** 3) - 0]
# hinge per example: sum over the other classes of max(0, 1 - logits[label] + logits[i]), over 3 classes
MULTI_MARGIN = [0.0, (1 + 4) / 3]


@pytest.fixture
def plugin(monkeypatch):
    """A loss module importable as `my_losses`, as a job's `package.module:function` would name it."""
    module = types.ModuleType("my_losses")
    module.squared = lambda logits, labels: (logits - nn.functional.one_hot(labels, logits.shape[1])).square().sum(1)
    module.total = lambda logits, labels: nn.functional.cross_entropy(logits, labels, reduction="sum")
    monkeypatch.setitem(sys.modules, "my_losses", module)
    return module


def last_stage(loss: str = "cross_entropy", mode: Mode = Mode.SG) -> StageCompute:
    """The last of two stages, whose module passes its input through (identity weights): logits = x."""
    module = nn.Linear(3, 3)
    with torch.no_grad():
        module.weight.copy_(torch.eye(3))
        module.bias.zero_()
    return StageCompute(module, mode=mode, optimizer=OptimizerSpec("sgd", 0.1), loss=loss)


def test_the_built_in_losses_are_the_names_a_job_file_may_use():
    assert tuple(BUILTIN_LOSSES) == LOSS_NAMES
    assert all(resolve_loss(name) is BUILTIN_LOSSES[name] for name in LOSS_NAMES)


@pytest.mark.parametrize("name, expected", [("cross_entropy", CROSS_ENTROPY), ("multi_margin", MULTI_MARGIN)])
def test_each_built_in_loss_gives_the_hand_computed_loss_per_example(name, expected):
    assert torch.allclose(resolve_loss(name).per_example(LOGITS, LABELS), torch.tensor(expected))


def test_an_import_path_names_a_plugin_loss(plugin):
    loss = resolve_loss("my_losses:squared")
    assert loss.name == "my_losses:squared" and loss.per_example is plugin.squared
    assert loss.right is class_right, "a plug-in is right where the arg-max class is"


@pytest.mark.parametrize("name, text", [
    ("hinge", "unknown loss 'hinge'; known: cross_entropy, multi_margin, bits"),
    ("no_such_module:f", "loss 'no_such_module:f' cannot be imported"),
])
def test_an_unknown_loss_is_a_config_error_naming_it(name, text):
    with pytest.raises(UnknownBuilderError, match=text):
        resolve_loss(name)


def test_a_loss_that_does_not_give_one_value_per_example_fails_naming_itself(plugin):
    with pytest.raises(ValueError, match=r"loss 'my_losses:total' must return one float per example, shape \[2\], got torch.float32 \[\]"):
        per_example_losses(Loss("my_losses:total", plugin.total), LOGITS, LABELS)


@pytest.mark.parametrize("value", ["cross_entropy", "multi_margin", "bits", "my_losses:squared", "pkg.sub.module:fn_2"])
def test_check_loss_accepts_built_in_names_and_import_paths(value):
    assert check_loss(value) == value


@pytest.mark.parametrize("value", ["hinge", "", "a:b:c", "pkg.:f", ":f", "pkg:", 5, None])
def test_check_loss_refuses_anything_else(value):
    with pytest.raises(ConfigError, match="is not one of cross_entropy, multi_margin, bits nor an import path"):
        check_loss(value)


def last_assignment(loss: str) -> StageAssignment:
    """What a worker is told to serve the last of two stages."""
    return StageAssignment(job="unit", index=1, num_stages=2, spec=StageSpec("linear", {"features": 3}), mode=Mode.SG,
                           input_shape=(3,), num_classes=3, optimizer=OptimizerSpec("sgd", 0.1), seed=0, window=1,
                           threads=1, coordinator="inproc://c", **chain_edges(1, (3,), "inproc://u"), loss=loss)


def test_the_loss_travels_in_the_assignment_and_may_be_missing_on_the_wire(plugin):
    wire = last_assignment("my_losses:squared").to_wire()
    assert wire["loss"] == "my_losses:squared" and StageAssignment.from_wire(wire).loss == "my_losses:squared"
    del wire["loss"]
    assert StageAssignment.from_wire(wire).loss == "cross_entropy"
    with pytest.raises(ConfigError, match="loss 'hinge'"):
        StageAssignment.from_wire({**wire, "loss": "hinge"})


def test_evaluate_last_matches_the_hand_computation():
    result = last_stage().evaluate_last(LOGITS.clone(), LABELS)
    meta = score_meta(result.score.numpy(), result.count)
    assert isinstance(result, EvalResult) and meta["correct"] == 1 and meta["count"] == 2  # argmax [0, 2] against [0, 1]
    assert meta["loss_sum"] == pytest.approx(sum(CROSS_ENTROPY), rel=1e-6)
    margin = last_stage("multi_margin").evaluate_last(LOGITS.clone(), LABELS)
    assert float(margin.score[0]) == pytest.approx(sum(MULTI_MARGIN))
    assert meta == {"loss_sum": float(result.score[0]), "correct": 1, "count": 2}


def test_training_uses_the_jobs_loss_and_sends_it_upstream_in_synthetic_loss_mode(plugin):
    stage = last_stage("my_losses:squared", Mode.SL)
    result = stage.train_last(LOGITS.clone(), LABELS)
    per_example = plugin.squared(LOGITS, LABELS)  # [(2-1)^2 + 1 + 0, 0 + 1 + 9] = [2, 10]
    assert torch.equal(per_example, torch.tensor([2.0, 10.0]))
    assert score_meta(result.score.numpy(), result.count) == {"loss_sum": pytest.approx(12.0), "correct": 1, "count": 2}
    assert torch.allclose(result.upstream, per_example[:, None])


def test_a_broken_plugin_loss_fails_the_training_step(plugin):
    with pytest.raises(ValueError, match="must return one float per example"):
        last_stage("my_losses:total").train_last(LOGITS.clone(), LABELS)


def test_only_the_last_stage_resolves_the_loss():
    config = StageAssignment(job="unit", index=0, num_stages=2, spec=StageSpec("linear", {"features": 3}), mode=Mode.BACKPROP,
                             input_shape=(3,), num_classes=3, optimizer=OptimizerSpec("sgd", 0.1), seed=0, window=1,
                             threads=1, coordinator="inproc://c", **chain_edges(0, (3,), None, "inproc://d"), loss="not_installed:loss")
    assert assigned_stage(config, "cpu", Timeline())[0].loss is None
    with pytest.raises(UnknownBuilderError, match="cannot be imported"):
        last_stage("not_installed:loss")


def test_a_job_names_its_loss_in_the_file_or_by_flag():
    table = {"name": "t", "dataset": "mnist", "stages": [{"kind": "linear_bn_relu", "features": 8}, {"kind": "linear", "features": 10}]}
    assert "loss" in JOB_KEYS and OVERRIDES["--loss"].name == "loss"
    assert job_from_table(table).loss == "cross_entropy"
    job = job_from_table({**table, "loss": "my_losses:squared"})
    assert job.loss == "my_losses:squared" and job_as_table(job)["loss"] == "my_losses:squared"
    with pytest.raises(ConfigError, match="job: loss 'hinge' is not one of"):
        job_from_table({**table, "loss": "hinge"})


# -- the bits of the copy tasks and a sequence's characters, in nats -------------------------------------------


def test_the_bits_loss_sums_the_binary_cross_entropy_of_an_examples_bits_in_nats():
    logits, targets = torch.zeros(2, 8), torch.ones(2, 8)
    torch.testing.assert_close(binary_bits(logits, targets), torch.full((2,), 8 * math.log(2)))  # a coin per bit: ln 2 each
    assert resolve_loss("bits").per_example is binary_bits
    sure = torch.tensor([[30.0, -30.0]])
    assert binary_bits(sure, torch.tensor([[1.0, 0.0]])).item() < 1e-6
    assert math.isclose(binary_bits(sure, torch.tensor([[0.0, 0.0]])).item(), 30.0, rel_tol=1e-4)


def test_a_characters_cross_entropy_is_in_nats():
    logits, targets = torch.zeros(6, 4), torch.tensor([0, 1, 2, 3, 3, 3])
    torch.testing.assert_close(resolve_loss("cross_entropy").per_example(logits, targets), torch.full((6,), math.log(4)))
    sure = torch.full((1, 4), -30.0)
    sure[0, 1] = 30.0
    assert resolve_loss("cross_entropy").per_example(sure, torch.tensor([1])).item() < 1e-6
    assert math.isclose(resolve_loss("cross_entropy").per_example(sure, torch.tensor([0])).item(), 60.0, rel_tol=1e-4)


def test_an_example_is_right_when_every_bit_or_the_class_is():
    logits = torch.tensor([[2.0, -1.0], [2.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert bits_right(logits, targets).tolist() == [True, False]
    assert class_right(logits, torch.tensor([0, 1])).tolist() == [True, False]
    assert BUILTIN_LOSSES["bits"].right is bits_right
    assert BUILTIN_LOSSES["cross_entropy"].right is class_right and BUILTIN_LOSSES["multi_margin"].right is class_right
