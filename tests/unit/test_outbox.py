"""protocol/outbox.py: what an outbox writes, keeps and holds back, against a fake socket and a clock set by hand."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zmq

from dni.protocol import Kind, Message, Outbox, Outboxes, decode


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """A socket whose peer takes `room` more messages, then raises zmq.Again as a full or absent one does."""

    def __init__(self, room: int = 1_000) -> None:
        self.room = room
        self.taken: list[Message] = []
        self.flags: list[int] = []

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True) -> None:
        self.flags.append(flags)
        if self.room <= 0:
            raise zmq.Again()
        self.room -= 1
        self.taken.append(decode([bytes(frame) for frame in frames]))


def message(batch: int, size: int = 4) -> Message:
    return Message(Kind.FORWARD, "job", batch, batch, 0, {}, {"x": np.full(size, batch, np.float32)})


def batches(peer: Peer) -> list[int]:
    return [taken.batch for taken in peer.taken]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_without_a_delay_a_message_is_written_at_once_and_never_waited_for(clock):
    peer = Peer()
    outbox = Outbox(peer, clock=clock)
    outbox.put(message(0))
    assert outbox.write() == 1 and batches(peer) == [0] and len(outbox) == 0
    assert peer.flags == [zmq.NOBLOCK]
    assert not outbox.blocked and outbox.backlog() == 0 and outbox.next_due() is None


def test_a_peer_that_takes_no_more_leaves_the_rest_queued_in_order_and_asks_for_pollout(clock):
    peer = Peer(room=1)
    outbox = Outbox(peer, bound=2, clock=clock)
    for batch in range(3):
        outbox.put(message(batch))
    assert outbox.write() == 1 and batches(peer) == [0]
    assert outbox.blocked and outbox.wants_write and outbox.backlog() == 2 and outbox.over_bound
    peer.room = 1
    assert outbox.write() == 1 and outbox.backlog() == 1 and not outbox.over_bound
    peer.room = 10
    assert outbox.write() == 1 and batches(peer) == [0, 1, 2]
    assert not outbox.wants_write and outbox.sent == 3


def test_a_message_is_due_exactly_the_delay_after_it_was_put_and_not_a_moment_before(clock):
    peer = Peer()
    outbox = Outbox(peer, delay=0.010, clock=clock)
    outbox.put(message(0))
    assert outbox.next_due() == pytest.approx(100.010)
    clock.now = 100.0099
    assert outbox.write() == 0 and peer.taken == [] and len(outbox) == 1
    assert outbox.backlog() == 0, "a message held for its delay is on the wire, not backlog"
    clock.now = 100.010
    assert outbox.write() == 1 and batches(peer) == [0]


def test_held_messages_leave_in_the_order_they_were_put(clock):
    peer = Peer()
    outbox = Outbox(peer, delay=0.005, clock=clock)
    for batch in range(4):
        clock.now = 100.0 + batch * 0.001
        outbox.put(message(batch))
    clock.now = 100.0065  # 0 and 1 are due (100.005, 100.006), 2 and 3 not yet
    assert outbox.write() == 2 and batches(peer) == [0, 1]
    clock.now = 100.1
    assert outbox.write() == 2 and batches(peer) == [0, 1, 2, 3]


def test_lateness_is_how_long_after_its_due_time_a_message_was_written(clock):
    outboxes = Outboxes([Outbox(Peer(), delay=0.010, clock=clock)])
    outbox = outboxes.all[0]
    outbox.put(message(0))
    clock.now = 100.013  # the loop was computing when 0 fell due
    outboxes.write()
    outbox.put(message(1))  # due at 100.023
    clock.now = 100.024
    outboxes.write()
    stats = outboxes.stats()
    assert stats["late_max_ms"] == pytest.approx(3.0) and stats["late_mean_ms"] == pytest.approx(2.0)
    assert stats["delay_ms"] == pytest.approx(10.0) and stats["sent"] == 2 and stats["held"] == 0
    assert "emulated" in stats["link"]


def test_a_poll_waits_no_longer_than_until_the_first_held_message_of_any_outbox_is_due(clock):
    down, up = Outbox(Peer(), delay=0.020, clock=clock), Outbox(Peer(), delay=0.020, clock=clock)
    outboxes = Outboxes([down, up])
    assert outboxes.timeout(1.0) == 1.0
    down.put(message(0))
    clock.now = 100.005
    up.put(message(1))
    assert outboxes.timeout(1.0) == pytest.approx(0.015)
    assert outboxes.timeout(0.010) == 0.010
    clock.now = 100.030
    assert outboxes.timeout(1.0) == 0.0
    assert outboxes.write() == 2 and outboxes.timeout(1.0) == 1.0


def test_a_blocked_outbox_sets_no_timeout_the_loop_waits_for_pollout_instead(clock):
    outbox = Outbox(Peer(room=0), clock=clock)
    outbox.put(message(0))
    outbox.write()
    assert outbox.wants_write and outbox.next_due() is None and Outboxes([outbox]).timeout(1.0) == 1.0


def test_drop_forgets_what_is_queued(clock):
    peer = Peer(room=0)
    outbox = Outbox(peer, delay=0.010, clock=clock)
    outbox.put(message(0))
    outbox.put(message(1))
    assert outbox.drop() == 2 and len(outbox) == 0 and not outbox.blocked
    peer.room = 5
    clock.now = 200.0
    assert outbox.write() == 0 and peer.taken == []


def test_large_messages_go_zero_copy_and_small_ones_are_copied(clock):
    copies: list[bool] = []

    class Recorder(Peer):
        def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True) -> None:
            copies.append(copy)

    outbox = Outbox(Recorder(), clock=clock)
    outbox.put(message(0, size=4))
    outbox.put(message(1, size=1 << 19))  # 2 MiB of float32
    outbox.write()
    assert copies == [True, False]


@pytest.mark.parametrize("delay", [-0.001, float("nan"), float("inf")])
def test_a_delay_must_be_a_finite_non_negative_number_of_seconds(delay):
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        Outbox(Peer(), delay=delay)
