"""workers/stage/blocks.py and a sequence job's stages as a worker builds them (`assigned_stage`): a recurrent core and the
per-step readout are the one stage class around a `Recurrent` and a `PerStep` block, checked against their
arithmetic written out (a twin stage, torch) and across a checkpoint.

Tiny stages (3 inputs, 4 LSTM units, 2 outputs), a batch of two, chunks of three steps, plain SGD. Losses are in
nats."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec, SynthesizerSpec
from dni.workers.stage.blocks import WHOLE, Feedforward, PerStep, Span, per_step
from dni.workers.build.builder import assigned_stage
from dni.workers.stage.checkpoint import load_checkpoint, save_checkpoint
from dni.workers.stage.compute import StageCompute
from dni.workers.stage.recurrent import Recurrent, lstm
from dni.workers.stage.timing import Timeline
from dni.testing import chain_edges

BATCH, STEPS, FEATURES, HIDDEN, OUTPUTS = 2, 3, 3, 4, 2
SGD = OptimizerSpec("sgd", 0.1)


def assignment(index: int, mode: Mode = Mode.SG, loss: str = "bits", **spec) -> StageAssignment:
    recurrent = index == 0
    kind, params = ("lstm", {"hidden": HIDDEN}) if recurrent else ("linear", {"features": OUTPUTS})
    return StageAssignment(
        job="j", index=index, num_stages=2, mode=mode, input_shape=(FEATURES,) if recurrent else (HIDDEN,),
        spec=StageSpec(spec.get("kind", kind), spec.get("params", params), SynthesizerSpec("mlp", {"hidden": 8, "layers": 1})),
        num_classes=OUTPUTS, optimizer=SGD, seed=0, window=2, threads=1, coordinator="ipc://c",
        **chain_edges(index, (FEATURES,) if recurrent else (HIDDEN,), "ipc://u" if index else None, None if index else "ipc://d"), loss=loss, truncation=STEPS)


def recurrent_stage(mode: Mode = Mode.SG) -> StageCompute:
    stage, built = assigned_stage(assignment(0, mode), "cpu", Timeline())
    assert isinstance(stage.block, Recurrent) and built.output_shape == (HIDDEN,)
    return stage


def recurrent(stage: StageCompute) -> Recurrent:
    assert isinstance(stage.block, Recurrent)
    return stage.block


def chunk(seed: int, features: int = FEATURES) -> torch.Tensor:
    return torch.randn(BATCH, STEPS, features, generator=torch.Generator().manual_seed(seed))


def twin(stage: StageCompute) -> StageCompute:
    """The stage's core and synthesizer over time, copied, in a locked stage that takes the gradients given by hand."""
    core = lstm((FEATURES,), hidden=HIDDEN)
    core.load_state_dict(stage.module.state_dict())
    synthesizer = None
    over_time = recurrent(stage).over_time
    if over_time is not None:
        synthesizer = type(over_time.synthesizer)((2 * HIDDEN,), (2 * HIDDEN,), 0, True, layers=0)
        synthesizer.load_state_dict(over_time.synthesizer.state_dict())
    return StageCompute(Recurrent(core, synthesizer, optimizer=SGD), mode=Mode.BACKPROP, optimizer=SGD, first=True)


def predicted(stage: StageCompute, outputs: torch.Tensor) -> torch.Tensor:
    """The edge synthesizer's prediction at every step of a chunk's outputs, with its live weights."""
    assert stage.synthesizer is not None
    synthesizer = stage.synthesizer
    return per_step(lambda h: synthesizer(h, None), outputs)


def test_per_step_runs_a_module_on_every_step_as_one_batch():
    linear = torch.nn.Linear(FEATURES, OUTPUTS)
    x = chunk(0)
    torch.testing.assert_close(per_step(linear, x), torch.stack([linear(x[:, t]) for t in range(STEPS)], dim=1))
    torch.testing.assert_close(PerStep(linear).forward(x, None, Span(False, False)), per_step(linear, x))
    assert PerStep(linear).over_steps and not Feedforward(linear).over_steps


def test_a_feedforward_block_evaluates_in_eval_mode_and_trains_again_after():
    module = nn.Sequential(nn.Linear(FEATURES, 4), nn.BatchNorm1d(4))
    block, x = Feedforward(module), torch.randn(5, FEATURES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        evaluated = block.evaluate(x, None, WHOLE)
        module.eval()
        expected = module(x)
        module.train()
    torch.testing.assert_close(evaluated, expected)
    assert module.training, "evaluation leaves the module in training mode"
    assert WHOLE == Span(start=True, last=True), "a feed-forward batch is its own sequence of one step"


def test_backprop_waits_for_the_true_gradient_and_is_truncated_bptt_of_the_chunk():
    stage = recurrent_stage(Mode.BACKPROP)
    assert recurrent(stage).over_time is None and stage.synthesizer is None
    reference = twin(stage)
    for number in range(3):
        outputs = stage.forward(number, chunk(number), None, Span(number == 0, False))
        torch.testing.assert_close(outputs, reference.forward(number, chunk(number), None, Span(number == 0, False)))
        assert stage.follow_synthesizer(number) is None and stage.awaits_target(number)
        assert stage.expected_target_shape(number) == (BATCH, STEPS, HIDDEN)
        gradient = chunk(10 + number, HIDDEN)
        assert stage.take_target(number, gradient) is None  # the first stage sends nothing upstream
        stage.apply_update()
        reference.receive_target(number, gradient)
        assert not stage.in_flight
    for mine, theirs in zip(stage.module.parameters(), reference.module.parameters()):
        torch.testing.assert_close(mine, theirs)


def test_sg_updates_at_once_with_the_synthesizers_prediction_and_trains_it_on_the_true_gradient():
    stage = recurrent_stage(Mode.SG)
    assert stage.synthesizer is not None and recurrent(stage).over_time is not None
    with torch.no_grad():  # a synthesizer that predicts something, so the update is not the zero one
        stage.synthesizer.output.weight.normal_(generator=torch.Generator().manual_seed(3))
    reference = twin(stage)
    outputs = stage.forward(0, chunk(0), None, Span(True, False))
    prediction = predicted(stage, outputs).detach()
    assert stage.follow_synthesizer(0) is None  # the first stage sends nothing upstream
    stage.apply_update()
    reference.forward(0, chunk(0), None, Span(True, False))
    reference.receive_target(0, prediction)
    for mine, theirs in zip(stage.module.parameters(), reference.module.parameters()):
        torch.testing.assert_close(mine, theirs)

    true = chunk(20, HIDDEN)
    before = F.mse_loss(predicted(stage, outputs), true).item()  # window 2 of one batch: the stashed weights are these
    assert stage.take_target(0, true) is None
    assert stage.synthesizer_loss == pytest.approx(before)
    after = F.mse_loss(predicted(stage, outputs), true).item()
    assert after < before, "one SGD step on its regression brings the prediction closer"
    assert dict(stage.staleness) == {0: 1}


def test_no_bprop_never_learns_and_keeps_nothing():
    stage = recurrent_stage(Mode.NO_BPROP)
    weights = [parameter.clone() for parameter in stage.module.parameters()]
    stage.forward(0, chunk(0), None, Span(True, True))
    assert not stage.in_flight and stage.follow_synthesizer(0) is None
    stage.apply_update()
    assert all(torch.equal(a, b) for a, b in zip(weights, stage.module.parameters()))


def test_evaluation_keeps_its_own_state_and_leaves_the_training_state_alone():
    stage = recurrent_stage(Mode.BACKPROP)
    stage.forward(0, chunk(0), None, Span(True, False))
    stage.receive_target(0, chunk(10, HIDDEN))
    kept = recurrent(stage).state
    first = stage.evaluate(chunk(1), None, Span(True, False))
    second = stage.evaluate(chunk(2), None, Span(False, True))
    assert recurrent(stage).state is kept
    core = twin(stage).module
    with torch.no_grad():
        outputs, state = core(chunk(1), core.initial_state(BATCH, torch.device("cpu")))
        torch.testing.assert_close(first, outputs)
        torch.testing.assert_close(second, core(chunk(2), state)[0])


def test_a_restored_stage_keeps_the_state_across_chunks_and_goes_on_as_the_saved_one(tmp_path):
    original = recurrent_stage(Mode.SG)
    for number in range(2):
        original.forward(number, chunk(number), None, Span(number == 0, False))
        original.update_after_forward(number)
        original.take_target(number, chunk(10 + number, HIDDEN))
    save_checkpoint(str(tmp_path / "stage0.pt"), original)
    restored = recurrent_stage(Mode.SG)
    load_checkpoint(str(tmp_path / "stage0.pt"), restored)
    assert restored.steps == original.steps == 2
    for mine, theirs in zip(recurrent(restored).state, recurrent(original).state):
        torch.testing.assert_close(mine, theirs)
    assert recurrent(restored).prediction is None, "a prediction's graph is not saved"
    recurrent(original).prediction = None  # so both take the same next step
    for stage in (original, restored):
        stage.forward(2, chunk(2), None, Span(False, False))
        stage.update_after_forward(2)
        stage.take_target(2, chunk(12, HIDDEN))
    assert original.state().keys() == restored.state().keys()
    for mine, theirs in zip(restored.state().values(), original.state().values()):
        torch.testing.assert_close(mine, theirs)


def readout(mode: Mode = Mode.SG, loss: str = "bits") -> StageCompute:
    stage, built = assigned_stage(assignment(1, mode, loss), "cpu", Timeline())
    assert isinstance(stage.block, PerStep) and built.output_shape == (OUTPUTS,)
    return stage


def test_the_readout_scores_only_the_masked_steps_and_sends_their_gradient_upstream():
    stage = readout()
    x = chunk(0, HIDDEN).requires_grad_()
    targets = (chunk(1, OUTPUTS) > 0).float()
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    logits = per_step(stage.module, x)
    nats = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    (nats * mask).sum().backward()
    right = (((logits > 0) == (targets > 0.5)).all(-1).float() * mask).sum()

    result = stage.last_step(x.detach(), targets, mask, Span(True, False))
    torch.testing.assert_close(result.score, torch.stack([(nats * mask).sum(), right, mask.sum()]).double().detach())
    assert result.upstream is not None
    torch.testing.assert_close(result.upstream, x.grad)
    assert result.upstream[0, 0].abs().sum() == 0, "an unscored step gets no gradient"


def test_the_readout_of_characters_scores_the_class_and_no_bprop_sends_nothing_upstream():
    stage = readout(Mode.NO_BPROP, "cross_entropy")
    x, targets, mask = chunk(0, HIDDEN), torch.tensor([[0, 1, 1], [1, 0, 0]]), torch.ones(BATCH, STEPS)
    logits = per_step(stage.module, x)
    result = stage.last_step(x, targets, mask)
    nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
    assert result.upstream is None
    torch.testing.assert_close(result.score[0], nats.double().detach())
    assert int(result.score[1]) == int((logits.argmax(-1) == targets).sum()) and int(result.score[2]) == 6
    weights = [parameter.clone() for parameter in stage.module.parameters()]
    stage.apply_update()
    assert not all(torch.equal(a, b) for a, b in zip(weights, stage.module.parameters())), "the readout learns"


def test_the_readout_evaluates_every_step_weighed_by_the_mask():
    stage = readout(Mode.SG, "cross_entropy")
    x, targets = chunk(0, HIDDEN), torch.tensor([[0, 1, 1], [1, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logits = per_step(stage.module, x).detach()
    nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    result = stage.evaluate_last(x, targets, mask, Span(True, True))
    right = ((logits.argmax(-1) == targets).float() * mask).sum()
    torch.testing.assert_close(result.score, torch.stack([(nats * mask).sum(), right, mask.sum()]).double())
    assert result.count is None, "a masked score counts its examples on the device"


@pytest.mark.parametrize("index, spec, message", [
    (0, {"params": {"hidden": HIDDEN, "depth": 2}}, "stage 0 (lstm): unknown parameter 'depth'"),
    (0, {"kind": "linear_bn_relu", "params": {"features": 4}}, "unknown recurrent core 'linear_bn_relu'"),
])
def test_a_stage_that_does_not_fit_is_refused_naming_it(index, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        assigned_stage(assignment(index, **spec), "cpu", Timeline())


def test_modes_without_a_per_step_meaning_are_refused():
    with pytest.raises(ConfigError, match="a recurrent stage trains in backprop, sg, no_bprop, not cdni"):
        assigned_stage(assignment(0, Mode.CDNI), "cpu", Timeline())
