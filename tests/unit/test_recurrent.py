"""workers/stage/recurrent.py: the kept state, truncated BPTT, and the synthetic gradient over time against hand-written torch.

A recurrent core is a block (`Recurrent`) inside the one stage class (`StageCompute`): the stage's `forward` then
`receive_target` is one chunk's forward and backward pass, the stage steps the core's optimiser. A locked
(`backprop`) stage whose block has a synthesizer over time takes true gradients from below and bridges each
truncation with its synthesizer's prediction. Tiny cores (3 inputs, 4 units), a batch of two, chunks of three
steps, plain SGD so every update is exact.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec, StageSpec
from dni.workers.stage.blocks import Span
from dni.workers.build.builder import build_stage
from dni.workers.stage.compute import StageCompute
from dni.workers.stage.recurrent import Recurrent, gru, linear_synthesizer, lstm, state_vector

LR = 0.1
SGD = OptimizerSpec("sgd", LR)
BATCH, STEPS, FEATURES, HIDDEN = 2, 3, 3, 4


def core(kind=lstm, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return kind((FEATURES,), hidden=HIDDEN)


def chunk(seed: int) -> torch.Tensor:
    return torch.randn(BATCH, STEPS, FEATURES, generator=torch.Generator().manual_seed(100 + seed))


def output_grad(seed: int) -> torch.Tensor:
    return torch.randn(BATCH, STEPS, HIDDEN, generator=torch.Generator().manual_seed(200 + seed))


def compute(mode: Mode, module: nn.Module, synthesizer: nn.Module | None = None, discount: float = 1.0,
            first: bool = True) -> StageCompute:
    """A core stage: the core (with its synthesizer over time) as the block of a stage without an edge synthesizer."""
    return StageCompute(Recurrent(module, synthesizer, optimizer=SGD, discount=discount), mode=mode, optimizer=SGD,
                        first=first)


def block(stage: StageCompute) -> Recurrent:
    assert isinstance(stage.block, Recurrent)
    return stage.block


def step(stage: StageCompute, number: int, *, start: bool, last: bool) -> torch.Tensor | None:
    """One chunk through the stage: its forward pass, then its true output gradient back; dL/dx when it sends one."""
    stage.forward(number, chunk(number), None, Span(start, last))
    return stage.receive_target(number, output_grad(number))


def random_synthesizer(state_size: int) -> nn.Module:
    synthesizer = linear_synthesizer(state_size)
    with torch.no_grad():
        synthesizer.output.weight.copy_(torch.randn(state_size, state_size, generator=torch.Generator().manual_seed(7)) * 0.3)
    return synthesizer


class ZeroSynthesizer(nn.Module):
    """Predicts zero, always: its one parameter gets a zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, h: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return h * 0 * self.scale


def sgd_step(module: nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter -= LR * parameter.grad
            parameter.grad = None


@pytest.mark.parametrize("kind", [lstm, gru])
def test_state_carries_across_chunks_and_restarts_with_a_sequence(kind):
    stage = compute(Mode.NO_BPROP, core(kind))
    reference = core(kind)
    first, second = chunk(0), chunk(1)
    outputs = [stage.forward(0, first, None, Span(True, False)), stage.forward(1, second, None, Span(False, True))]
    whole, _ = reference(torch.cat([first, second], dim=1), reference.initial_state(BATCH, torch.device("cpu")))
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole)
    fresh, _ = reference(second, reference.initial_state(BATCH, torch.device("cpu")))
    torch.testing.assert_close(stage.forward(2, second, None, Span(True, True)), fresh)
    assert not stage.in_flight, "a stage that never learns keeps no chunk"


def test_backprop_is_truncated_bptt_with_the_state_detached_at_each_boundary():
    stage, reference = compute(Mode.BACKPROP, core()), core()
    state = reference.initial_state(BATCH, torch.device("cpu"))
    for index in range(3):
        outputs = stage.forward(index, chunk(index), None, Span(index == 0, index == 2))
        assert stage.receive_target(index, output_grad(index)) is None  # the first stage sends nothing upstream
        expected, final = reference(chunk(index), tuple(part.detach() for part in state))
        torch.testing.assert_close(outputs, expected.detach())
        expected.backward(output_grad(index))
        sgd_step(reference)
        state = final
    for mine, theirs in zip(stage.module.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)


def test_a_synthesizer_over_time_that_predicts_zero_is_truncated_bptt_exactly():
    over_time, bptt = compute(Mode.BACKPROP, core(), ZeroSynthesizer()), compute(Mode.BACKPROP, core())
    for index in range(4):
        for stage in (over_time, bptt):
            step(stage, index, start=index == 0, last=index == 3)
    for mine, theirs in zip(over_time.module.parameters(), bptt.module.parameters()):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("discount", [1.0, 0.5])
def test_the_prediction_is_added_at_the_chunk_end_and_learns_the_bootstrapped_target(discount):
    reference_core, reference_synthesizer = core(), random_synthesizer(2 * HIDDEN)
    stage = compute(Mode.BACKPROP, core(), random_synthesizer(2 * HIDDEN), discount)
    step(stage, 0, start=True, last=False)
    step(stage, 1, start=False, last=False)

    # chunk 0 by hand: loss plus discount * <s1, delta_hat(s1)>, delta_hat held constant
    zero = reference_core.initial_state(BATCH, torch.device("cpu"))
    outputs, s1 = reference_core(chunk(0), zero)
    predicted_s1 = reference_synthesizer(state_vector(s1).detach(), None)
    surrogate = (outputs * output_grad(0)).sum() + discount * (state_vector(s1) * predicted_s1.detach()).sum()
    surrogate.backward()
    sgd_step(reference_core)
    # chunk 1 by hand: the same from s1 (detached, a leaf), and the gradient reaching s1 is delta_hat(s1)'s target
    start = state_vector(s1).detach().requires_grad_()
    h, c = start.split(HIDDEN, dim=1)
    outputs, s2 = reference_core(chunk(1), (h, c))
    predicted_s2 = reference_synthesizer(state_vector(s2).detach(), None).detach()
    ((outputs * output_grad(1)).sum() + discount * (state_vector(s2) * predicted_s2).sum()).backward()
    target = start.grad
    loss = F.mse_loss(predicted_s1, target)
    reference_synthesizer.zero_grad()
    loss.backward()

    assert stage.synthesizer_loss == pytest.approx(float(loss.detach()), rel=1e-6)
    sgd_step(reference_core)
    sgd_step(reference_synthesizer)
    for mine, theirs in zip(stage.module.parameters(), reference_core.parameters()):
        torch.testing.assert_close(mine, theirs)
    over_time = block(stage).over_time
    assert over_time is not None
    torch.testing.assert_close(over_time.synthesizer.output.weight, reference_synthesizer.output.weight)
    torch.testing.assert_close(block(stage).prediction, predicted_s2)


def test_the_last_chunk_of_a_sequence_adds_and_predicts_nothing():
    over_time, bptt = compute(Mode.BACKPROP, core(), random_synthesizer(2 * HIDDEN)), compute(Mode.BACKPROP, core())
    for stage in (over_time, bptt):
        step(stage, 0, start=True, last=True)
    assert block(over_time).prediction is None
    for mine, theirs in zip(over_time.module.parameters(), bptt.module.parameters()):
        assert torch.equal(mine, theirs)


def test_a_stage_below_another_returns_the_gradient_of_its_input():
    stage = compute(Mode.BACKPROP, core(), first=False)
    x, reference = chunk(0), core()
    stage.forward(0, x.clone(), None, Span(True, True))
    returned = stage.receive_target(0, output_grad(0))
    x.requires_grad_()
    outputs, _ = reference(x, reference.initial_state(BATCH, torch.device("cpu")))
    outputs.backward(output_grad(0))
    torch.testing.assert_close(returned, x.grad)


@pytest.mark.parametrize("mode", [Mode.CDNI, Mode.SL])
def test_modes_without_a_per_step_meaning_are_refused(mode):
    with pytest.raises(ConfigError, match=re.escape(f"stage 0 (lstm): a recurrent stage trains in backprop, sg, no_bprop, "
                                                    f"not {mode.value}")):
        build_stage(StageSpec("lstm", {"hidden": HIDDEN}), index=0, input_shape=(FEATURES,), mode=mode, num_classes=2,
                    seed=0, is_last=False, over_steps=True)


def test_evaluation_leaves_the_training_state_alone():
    stage = compute(Mode.BACKPROP, core())
    step(stage, 0, start=True, last=False)
    kept = block(stage).state
    outputs = stage.evaluate(chunk(1), None, Span(True, True))
    assert block(stage).state is kept and outputs.shape == (BATCH, STEPS, HIDDEN)


def test_an_lstm_starts_its_forget_gates_at_the_bias_asked_for():
    torch.manual_seed(0)
    kept = lstm((FEATURES,), hidden=HIDDEN, forget_bias=1.0)
    torch.manual_seed(0)
    plain = lstm((FEATURES,), hidden=HIDDEN)
    shift = kept.lstm.bias_ih_l0 - plain.lstm.bias_ih_l0
    torch.testing.assert_close(shift, torch.cat([torch.zeros(HIDDEN), torch.ones(HIDDEN), torch.zeros(2 * HIDDEN)]))
    torch.testing.assert_close(kept.lstm.weight_hh_l0, plain.lstm.weight_hh_l0)
