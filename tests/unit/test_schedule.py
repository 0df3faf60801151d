"""dni/schedule.py: what a stage may take next and when the coordinator may feed, driven with plain numbers."""
from __future__ import annotations

import pytest

from dni.schedule import FeedSchedule, StageSchedule, Turn, Wait


@pytest.mark.parametrize("in_flight, expected", [
    (0, Turn(batches=True, targets=True, waiting=Wait.INPUT)),
    (3, Turn(batches=True, targets=True, waiting=Wait.INPUT)),
    (4, Turn(batches=False, targets=True, waiting=Wait.GRADIENT)),
])
def test_an_unlocked_stage_takes_batches_while_its_window_has_room_and_targets_always(in_flight, expected):
    assert StageSchedule(window=4).turn(in_flight, outbox_over_bound=False) == expected


def test_a_locked_stage_holds_one_batch_whatever_its_window():
    locked = StageSchedule(window=4, locked=True)
    assert locked.capacity == 1
    assert locked.turn(0, False).batches and not locked.turn(1, False).batches
    assert locked.turn(1, False).waiting is Wait.GRADIENT


def test_an_outbox_over_its_bound_stops_new_batches_but_not_targets():
    turn = StageSchedule(window=4).turn(0, outbox_over_bound=True)
    assert turn == Turn(batches=False, targets=True, waiting=Wait.SEND)


def test_every_wait_is_an_activity_the_timeline_knows():
    from dni.workers.stage.timing import WAITING

    assert {wait.value for wait in Wait} == set(WAITING)


@pytest.mark.parametrize("sent, done, over_bound, allowed", [
    (0, 0, False, True), (6, 1, False, True), (7, 1, False, False), (7, 1, True, False), (3, 3, True, False),
])
def test_the_feed_keeps_at_most_its_credit_unanswered_and_waits_for_a_stage_0_that_takes_nothing(sent, done, over_bound, allowed):
    assert FeedSchedule(credit=6).may_feed(sent, done, over_bound) is allowed


@pytest.mark.parametrize("mode, window, in_flight, batches", [
    ("backprop", 4, 0, True), ("backprop", 4, 1, False),  # locked: one batch at a time whatever the window
    ("no_bprop", 2, 1, True), ("no_bprop", 2, 2, False),
])
def test_a_stage_schedules_by_its_mode_and_window(mode, window, in_flight, batches):
    from torch import nn

    from dni.spec import Mode, OptimizerSpec
    from dni.workers.stage.compute import StageCompute

    stage = StageCompute(nn.Linear(3, 2), mode=Mode(mode), optimizer=OptimizerSpec("sgd", 0.1), first=True, window=window)
    assert stage.schedule.turn(in_flight, outbox_over_bound=False).batches is batches
