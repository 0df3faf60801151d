"""workers/polling.py: which sockets a worker polls, given whether it serves a job and whether its window has room."""
from __future__ import annotations

import pytest
from torch import nn

from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec
from dni.workers.build import StageModules
from dni.workers.compute import StageCompute
from dni.workers.polling import PollSet, sockets_to_poll
from dni.workers.timing import WAITING, Timeline


@pytest.mark.parametrize("can_take_batch", [False, True])
def test_without_a_job_only_control_is_heard_and_no_time_is_counted(can_take_batch):
    assert sockets_to_poll(False, can_take_batch) == PollSet(forward=False, backward=False, waiting=None, control=True)


def test_with_room_in_the_window_batches_and_targets_are_heard_and_the_wait_is_for_input():
    assert sockets_to_poll(True, True) == PollSet(forward=True, backward=True, waiting="wait_input", control=True)


def test_with_a_full_window_only_targets_are_heard_and_the_wait_is_for_a_gradient():
    assert sockets_to_poll(True, False) == PollSet(forward=False, backward=True, waiting="wait_gradient", control=True)


def test_every_waiting_activity_is_one_the_timeline_knows():
    waits = {sockets_to_poll(True, room).waiting for room in (True, False)}
    assert waits == set(WAITING)


def compute(mode: Mode, window: int) -> StageCompute:
    config = StageAssignment(job="unit", index=0, num_stages=2, spec=StageSpec("linear", {"features": 2}), mode=mode,
                             input_shape=(3,), num_classes=2, optimizer=OptimizerSpec("sgd", 0.1), seed=0, window=window,
                             threads=1, coordinator="inproc://c", downstream="inproc://d")
    return StageCompute(config, StageModules(nn.Linear(3, 2), None, (2,)), Timeline())


@pytest.mark.parametrize("mode, window, in_flight, forward", [
    (Mode.BACKPROP, 4, 0, True), (Mode.BACKPROP, 4, 1, False),  # locked: one batch at a time whatever the window
    (Mode.NO_BPROP, 2, 1, True), (Mode.NO_BPROP, 2, 2, False),
])
def test_the_window_and_the_mode_decide_whether_batches_are_heard(mode, window, in_flight, forward):
    stage = compute(mode, window)
    stage.pending.update({batch: None for batch in range(in_flight)})  # stand-ins: only their number matters here
    assert sockets_to_poll(True, stage.can_take_batch()).forward is forward
