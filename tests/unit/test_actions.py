"""workers/loop/actions.py: the order of one step in every role, mode and event, read as data without any socket."""
from __future__ import annotations

import pytest

from dni.spec import Mode
from dni.workers.loop.actions import SENDS, Action, Event, Role, step_order

A = Action
UNLOCKED = (Mode.SG, Mode.CDNI, Mode.SL)
EVERY_ROW = [(role, mode, event) for role in Role for mode in Mode for event in Event]


def test_a_locked_hidden_stage_only_goes_forward_and_steps_when_its_target_comes():
    assert step_order(Role.HIDDEN, Mode.BACKPROP, Event.BATCH) == (A.FORWARD, A.SEND_ACTIVATION)
    assert step_order(Role.HIDDEN, Mode.BACKPROP, Event.TARGET) == (A.TAKE_TARGET, A.SEND_INPUT_GRADIENT, A.STEP)


@pytest.mark.parametrize("mode", UNLOCKED)
def test_an_unlocked_hidden_stage_sends_on_follows_its_synthesizer_and_steps_at_once(mode):
    assert step_order(Role.HIDDEN, mode, Event.BATCH) == (
        A.FORWARD, A.SEND_ACTIVATION, A.FOLLOW_SYNTHESIZER, A.SEND_INPUT_GRADIENT, A.STEP)
    assert step_order(Role.HIDDEN, mode, Event.TARGET) == (A.TAKE_TARGET,), "the target only trains the synthesizer"


def test_a_no_bprop_hidden_stage_never_learns_and_expects_no_target():
    assert step_order(Role.HIDDEN, Mode.NO_BPROP, Event.BATCH) == (A.FORWARD, A.SEND_ACTIVATION)
    assert step_order(Role.HIDDEN, Mode.NO_BPROP, Event.TARGET) == ()


@pytest.mark.parametrize("mode", list(Mode))
def test_the_last_stage_sends_its_input_gradient_before_it_reports_and_steps(mode):
    assert step_order(Role.LAST, mode, Event.BATCH) == (A.LOSS, A.SEND_INPUT_GRADIENT, A.REPORT, A.STEP)
    assert step_order(Role.LAST, mode, Event.TARGET) == (), "nothing comes back to the last stage"


@pytest.mark.parametrize("mode", list(Mode))
def test_an_evaluation_batch_is_evaluated_then_sent_on_or_reported(mode):
    assert step_order(Role.HIDDEN, mode, Event.EVALUATION) == (A.EVALUATE, A.SEND_ACTIVATION)
    assert step_order(Role.LAST, mode, Event.EVALUATION) == (A.EVALUATE, A.REPORT)


@pytest.mark.parametrize("role, mode, event", EVERY_ROW)
def test_in_every_row_every_send_comes_before_the_step_and_the_step_ends_it(role, mode, event):
    row = step_order(role, mode, event)
    assert all(isinstance(action, Action) for action in row) and len(set(row)) == len(row)
    if A.STEP in row:
        assert row[-1] is A.STEP and all(row.index(action) < row.index(A.STEP) for action in row if action in SENDS)
    if event is Event.EVALUATION:
        assert A.STEP not in row and A.FORWARD not in row and A.LOSS not in row, "evaluation never trains"


@pytest.mark.parametrize("role, mode, event", EVERY_ROW)
def test_an_output_is_computed_before_it_is_sent(role, mode, event):
    row = step_order(role, mode, event)
    makers = {A.SEND_ACTIVATION: (A.FORWARD, A.EVALUATE), A.SEND_INPUT_GRADIENT: (A.FOLLOW_SYNTHESIZER, A.LOSS, A.TAKE_TARGET),
              A.REPORT: (A.LOSS, A.EVALUATE)}
    for send, made_by in makers.items():
        if send in row:
            assert any(maker in row[:row.index(send)] for maker in made_by), f"{send.value} before what it sends"


def test_the_sends_are_the_actions_that_fill_an_outbox():
    assert SENDS == {A.SEND_ACTIVATION, A.SEND_INPUT_GRADIENT, A.REPORT}
