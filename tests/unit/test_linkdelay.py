"""protocol/linkdelay.py: the emulated link's delay queue, on a clock the test sets by hand."""
from __future__ import annotations

import pytest

from dni.protocol import DelayQueue
from dni.protocol import linkdelay
from dni.protocol.linkdelay import describe, poll_within, split_wait


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def drain(queue: DelayQueue) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []
    queue.send_due(lambda destination, item: sent.append((destination, item)))
    return sent


def test_a_message_is_due_exactly_the_delay_after_it_was_put_and_not_a_moment_before(clock):
    queue = DelayQueue(0.010, clock)
    assert not queue.is_due()
    assert queue.put("down", "a") == pytest.approx(100.010)
    clock.now = 100.0099
    assert not queue.is_due() and drain(queue) == [] and len(queue) == 1
    clock.now = 100.010
    assert queue.is_due() and drain(queue) == [("down", "a")] and len(queue) == 0 and not queue.is_due()


def test_messages_leave_in_the_order_they_were_put_whatever_their_destination(clock):
    queue = DelayQueue(0.005, clock)
    for step, (destination, item) in enumerate([("down", "h1"), ("up", "g0"), ("report", "r1"), ("down", "h2")]):
        clock.now = 100.0 + step * 0.001
        queue.put(destination, item)
    clock.now = 100.0065  # the first two are due (100.005, 100.006), the others not yet (100.007, 100.008)
    assert drain(queue) == [("down", "h1"), ("up", "g0")]
    clock.now = 100.1
    assert drain(queue) == [("report", "r1"), ("down", "h2")]
    assert queue.sent == 4


def test_a_poll_waits_no_longer_than_until_the_next_message_is_due(clock):
    queue = DelayQueue(0.020, clock)
    assert queue.timeout(1.0) == 1.0  # nothing held: the caller's own limit
    queue.put("down", "a")
    clock.now = 100.005
    queue.put("down", "b")
    assert queue.next_due() == pytest.approx(100.020)
    assert queue.timeout(1.0) == pytest.approx(0.015)
    assert queue.timeout(0.010) == 0.010  # the caller's limit when it is shorter
    clock.now = 100.030
    assert queue.timeout(1.0) == 0.0  # one is overdue: do not wait at all
    assert drain(queue) == [("down", "a"), ("down", "b")]  # b was due at 100.025
    assert queue.next_due() is None and queue.timeout(1.0) == 1.0


def test_without_a_delay_a_message_is_due_at_once(clock):
    queue = DelayQueue(0.0, clock)
    queue.put("down", "a")
    assert queue.timeout(1.0) == 0.0 and drain(queue) == [("down", "a")]


def test_a_send_that_raises_keeps_its_message_at_the_head_and_nothing_overtakes_it(clock):
    queue = DelayQueue(0.001, clock)
    queue.put("down", "a")
    queue.put("up", "b")
    clock.now = 101.0

    def refuse(destination: str, item: str) -> None:
        raise RuntimeError("the job ended while this send waited")

    with pytest.raises(RuntimeError):
        queue.send_due(refuse)
    assert len(queue) == 2 and queue.sent == 0
    assert drain(queue) == [("down", "a"), ("up", "b")]


def test_lateness_is_how_long_after_its_due_time_a_message_was_sent(clock):
    queue = DelayQueue(0.010, clock)
    queue.put("down", "a")
    clock.now = 100.013  # the sender was computing when a fell due
    drain(queue)
    queue.put("down", "b")  # due at 100.023
    clock.now = 100.024
    drain(queue)
    stats = queue.stats()
    assert stats["late_max_ms"] == pytest.approx(3.0) and stats["late_mean_ms"] == pytest.approx(2.0)
    assert stats["delay_ms"] == pytest.approx(10.0) and stats["sent"] == 2 and stats["held"] == 0
    assert "emulated" in stats["link"]


def test_drop_forgets_what_is_held(clock):
    queue = DelayQueue(0.010, clock)
    queue.put("down", "a")
    queue.put("down", "b")
    assert queue.drop() == 2 and len(queue) == 0 and queue.next_due() is None
    clock.now = 200.0
    assert drain(queue) == []


@pytest.mark.parametrize("delay", [-0.001, float("nan"), float("inf")])
def test_a_delay_must_be_a_finite_non_negative_number_of_seconds(delay):
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        DelayQueue(delay)


@pytest.mark.parametrize("seconds, expected", [
    (0.0251, (0.0, 25)),  # whole milliseconds are polled; the rest waits for the next turn of the loop
    (0.001, (0.0, 1)),
    (0.0004, (0.0004, 0)),  # under a millisecond: slept, then polled without waiting (not rounded up, not spun)
    (0.0, (0.0, 0)),
    (-0.002, (0.0, 0)),
])
def test_split_wait_never_polls_past_the_wait(seconds, expected):
    sleep, milliseconds = split_wait(seconds)
    assert (sleep, milliseconds) == (pytest.approx(expected[0]), expected[1])
    assert sleep + milliseconds / 1000 <= max(0.0, seconds) + 1e-12


def test_poll_within_sleeps_the_part_under_a_millisecond_then_polls(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(linkdelay.time, "sleep", slept.append)
    assert poll_within(lambda milliseconds: milliseconds, 0.0004) == 0 and slept == [pytest.approx(0.0004)]
    assert poll_within(lambda milliseconds: milliseconds, 0.0072) == 7 and len(slept) == 1


def test_every_report_calls_an_added_delay_emulated():
    assert describe(0) == "no added delay"
    assert describe(20.0) == "emulated link delay 20 ms per hop (held in the sender's queue; no netem)"
