"""workers/sequence_stage.py: a recurrent core and the per-step readout as a worker serves them, against their
arithmetic written out (RecurrentCompute, torch) and across a checkpoint.

Tiny stages (3 inputs, 4 LSTM units, 2 outputs), a batch of two, chunks of three steps, plain SGD."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec, SynthesizerSpec
from dni.workers.checkpoint import load_checkpoint, save_checkpoint
from dni.workers.recurrent import RecurrentCompute, lstm
from dni.workers.sequence_stage import ReadoutStage, RecurrentStage, build_sequence_stage, per_step
from dni.workers.timing import Timeline

BATCH, STEPS, FEATURES, HIDDEN, OUTPUTS = 2, 3, 3, 4, 2
SGD = OptimizerSpec("sgd", 0.1)


def assignment(index: int, mode: Mode = Mode.SG, loss: str = "bits", **spec) -> StageAssignment:
    recurrent = index == 0
    kind, params = ("lstm", {"hidden": HIDDEN}) if recurrent else ("linear", {"features": OUTPUTS})
    return StageAssignment(
        job="j", index=index, num_stages=2, mode=mode, input_shape=(FEATURES,) if recurrent else (HIDDEN,),
        spec=StageSpec(spec.get("kind", kind), spec.get("params", params), SynthesizerSpec("mlp", {"hidden": 8, "layers": 1})),
        num_classes=OUTPUTS, optimizer=SGD, seed=0, window=2, threads=1, coordinator="ipc://c",
        upstream="ipc://u" if index else None, downstream=None if index else "ipc://d", loss=loss, truncation=STEPS)


def recurrent_stage(mode: Mode = Mode.SG) -> RecurrentStage:
    stage, shape = build_sequence_stage(assignment(0, mode), "cpu", Timeline())
    assert isinstance(stage, RecurrentStage) and shape == (HIDDEN,)
    return stage


def chunk(seed: int, features: int = FEATURES) -> torch.Tensor:
    return torch.randn(BATCH, STEPS, features, generator=torch.Generator().manual_seed(seed))


def twin(stage: RecurrentStage) -> RecurrentCompute:
    """The stage's core and synthesizer over time, copied, stepped by hand."""
    core = lstm((FEATURES,), hidden=HIDDEN)
    core.load_state_dict(stage.module.state_dict())
    synthesizer = None
    if stage.recurrent.synthesizer is not None:
        synthesizer = type(stage.recurrent.synthesizer)((2 * HIDDEN,), (2 * HIDDEN,), 0, True, layers=0)
        synthesizer.load_state_dict(stage.recurrent.synthesizer.state_dict())
    return RecurrentCompute(core, synthesizer, mode=stage.mode, optimizer=SGD)


def test_per_step_runs_a_module_on_every_step_as_one_batch():
    linear = torch.nn.Linear(FEATURES, OUTPUTS)
    x = chunk(0)
    torch.testing.assert_close(per_step(linear, x), torch.stack([linear(x[:, t]) for t in range(STEPS)], dim=1))


def test_backprop_waits_for_the_true_gradient_and_is_truncated_bptt_of_the_chunk():
    stage = recurrent_stage(Mode.BACKPROP)
    reference = twin(stage)
    for number in range(3):
        outputs = stage.forward(number, chunk(number), start=number == 0, last=False)
        torch.testing.assert_close(outputs, reference.forward(chunk(number), start=number == 0))
        assert stage.follow_synthesizer(number) is None and stage.awaits_target(number)
        assert stage.expected_target_shape(number) == (BATCH, STEPS, HIDDEN)
        gradient = chunk(10 + number, HIDDEN)
        assert stage.take_target(number, gradient) is None  # the first stage sends nothing upstream
        reference.backward(gradient, last=False)
        assert not stage.in_flight
    for mine, theirs in zip(stage.module.parameters(), reference.core.parameters()):
        torch.testing.assert_close(mine, theirs)


def test_sg_updates_at_once_with_the_synthesizers_prediction_and_trains_it_on_the_true_gradient():
    stage = recurrent_stage(Mode.SG)
    assert stage.synthesizer is not None
    with torch.no_grad():  # a synthesizer that predicts something, so the update is not the zero one
        stage.synthesizer.output.weight.normal_(generator=torch.Generator().manual_seed(3))
    reference = twin(stage)
    outputs = stage.forward(0, chunk(0), start=True, last=False)
    predicted = per_step(lambda h: stage.synthesizer(h, None), outputs).detach()
    stage.follow_synthesizer(0)
    reference.forward(chunk(0), start=True)
    reference.backward(predicted, last=False)
    for mine, theirs in zip(stage.module.parameters(), reference.core.parameters()):
        torch.testing.assert_close(mine, theirs)

    true = chunk(20, HIDDEN)
    before = F.mse_loss(per_step(lambda h: stage.synthesizer(h, None), outputs), true).item()
    assert stage.take_target(0, true) is None
    assert stage.synthesizer_loss == pytest.approx(before)
    after = F.mse_loss(per_step(lambda h: stage.synthesizer(h, None), outputs), true).item()
    assert after < before, "one SGD step on its regression brings the prediction closer"
    assert dict(stage.staleness) == {0: 1}


def test_no_bprop_never_learns_and_keeps_nothing():
    stage = recurrent_stage(Mode.NO_BPROP)
    weights = [parameter.clone() for parameter in stage.module.parameters()]
    stage.forward(0, chunk(0), start=True, last=True)
    assert not stage.in_flight and stage.follow_synthesizer(0) is None
    assert all(torch.equal(a, b) for a, b in zip(weights, stage.module.parameters()))


def test_evaluation_keeps_its_own_state_and_leaves_the_training_state_alone():
    stage = recurrent_stage(Mode.BACKPROP)
    stage.forward(0, chunk(0), start=True, last=False)
    stage.take_target(0, chunk(10, HIDDEN))
    kept = stage.recurrent.state
    first = stage.evaluate(chunk(1), start=True)
    second = stage.evaluate(chunk(2), start=False)
    assert stage.recurrent.state is kept
    reference = twin(stage)
    outputs, state = reference.evaluate(chunk(1), None)
    torch.testing.assert_close(first, outputs)
    torch.testing.assert_close(second, reference.evaluate(chunk(2), state)[0])


def test_a_restored_stage_keeps_the_state_across_chunks_and_goes_on_as_the_saved_one(tmp_path):
    original = recurrent_stage(Mode.SG)
    for number in range(2):
        original.forward(number, chunk(number), start=number == 0, last=False)
        original.follow_synthesizer(number)
        original.take_target(number, chunk(10 + number, HIDDEN))
    save_checkpoint(str(tmp_path / "stage0.pt"), original)
    restored = recurrent_stage(Mode.SG)
    load_checkpoint(str(tmp_path / "stage0.pt"), restored)
    assert restored.steps == original.steps == 2
    for mine, theirs in zip(restored.recurrent.state, original.recurrent.state):
        torch.testing.assert_close(mine, theirs)
    assert restored.recurrent.prediction is None, "a prediction's graph is not saved"
    original.recurrent.prediction = None  # so both take the same next step
    for stage in (original, restored):
        stage.forward(2, chunk(2), start=False, last=False)
        stage.follow_synthesizer(2)
        stage.take_target(2, chunk(12, HIDDEN))
    for mine, theirs in zip(restored.state().values(), original.state().values()):
        torch.testing.assert_close(mine, theirs)


def readout(mode: Mode = Mode.SG, loss: str = "bits") -> ReadoutStage:
    stage, shape = build_sequence_stage(assignment(1, mode, loss), "cpu", Timeline())
    assert isinstance(stage, ReadoutStage) and shape == (OUTPUTS,)
    return stage


def test_the_readout_scores_only_the_masked_steps_and_sends_their_gradient_upstream():
    stage = readout()
    x = chunk(0, HIDDEN).requires_grad_()
    targets = (chunk(1, OUTPUTS) > 0).float()
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    logits = per_step(stage.module, x)
    bits = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1) / math.log(2)
    (bits * mask).sum().mul(math.log(2)).backward()
    right = (((logits > 0) == (targets > 0.5)).all(-1).float() * mask).sum()

    result = stage.last_step(x.detach(), targets, mask)
    torch.testing.assert_close(result.score, torch.stack([(bits * mask).sum(), right, mask.sum()]).double().detach())
    torch.testing.assert_close(result.upstream, x.grad)
    assert result.upstream[0, 0].abs().sum() == 0, "an unscored step gets no gradient"


def test_the_readout_of_characters_scores_the_class_and_no_bprop_sends_nothing_upstream():
    stage = readout(Mode.NO_BPROP, "cross_entropy")
    x, targets, mask = chunk(0, HIDDEN), torch.tensor([[0, 1, 1], [1, 0, 0]]), torch.ones(BATCH, STEPS)
    logits = per_step(stage.module, x)
    result = stage.last_step(x, targets, mask)
    bits = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum") / math.log(2)
    assert result.upstream is None
    torch.testing.assert_close(result.score[0], bits.double().detach())
    assert int(result.score[1]) == int((logits.argmax(-1) == targets).sum()) and int(result.score[2]) == 6
    weights = [parameter.clone() for parameter in stage.module.parameters()]
    stage.apply_update()
    assert not all(torch.equal(a, b) for a, b in zip(weights, stage.module.parameters())), "the readout learns"


@pytest.mark.parametrize("index, spec, message", [
    (0, {"params": {"hidden": HIDDEN, "depth": 2}}, "stage 0 (lstm): unknown parameter 'depth'"),
    (0, {"kind": "linear_bn_relu", "params": {"features": 4}}, "unknown recurrent core 'linear_bn_relu'"),
])
def test_a_stage_that_does_not_fit_is_refused_naming_it(index, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_sequence_stage(assignment(index, **spec), "cpu", Timeline())


def test_modes_without_a_per_step_meaning_are_refused():
    with pytest.raises(ValueError, match="a recurrent stage trains in backprop, sg, no_bprop, not cdni"):
        build_sequence_stage(assignment(0, Mode.CDNI), "cpu", Timeline())
