"""Outgoing messages of one socket, written by the event loop when they are due and the peer can take them.

Nothing that handles a message ever waits to send one: it puts the message into
the outbox of the socket it goes to, and the event loop writes outboxes without
blocking (`write`), as far as the peer takes them. A peer that takes no more
(its queue is full, or it is gone) leaves messages waiting in the outbox; the
loop then polls that socket for POLLOUT (`wants_write`), and the schedule stops
taking new work while an outbox's `backlog` is over its bound, so backpressure is
a rule of what the loop polls, never a wait inside a handler.

An emulated link delay is a due time: a message put at t may leave at t + delay
and not before, and the loop polls no longer than until the next one falls due
(`next_due`). A message held for its delay is on the (emulated) wire: it does
not count as backlog. The delay is the same for every message, so due times
never decrease and messages leave in the order they were put. A message leaves
late by however long the loop was busy when it fell due, which `stats` reports
as the emulation's own error. It needs of a socket only a non-blocking
`send_multipart`, and takes a clock.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Generic, Iterable, Optional, Protocol, Sequence, TypeVar

import zmq

from dni.protocol.codec import encode
from dni.protocol.linkdelay import describe
from dni.protocol.messages import Message
from dni.protocol.transport import ZERO_COPY_THRESHOLD

__all__ = ["DEFAULT_BOUND", "Outbox", "Outboxes", "Sendable", "check_delay"]

DEFAULT_BOUND = 2  # due messages a peer has not taken before the sender takes no new work


class Sendable(Protocol):
    def send_multipart(self, frames: Sequence[Any], /, flags: int = 0, copy: bool = True) -> Any: ...


_Socket = TypeVar("_Socket", bound=Sendable)


def check_delay(delay: float) -> float:
    if not (math.isfinite(delay) and delay >= 0):
        raise ValueError(f"a link delay must be a non-negative number of seconds, got {delay!r}")
    return delay


class Outbox(Generic[_Socket]):
    def __init__(self, socket: _Socket, delay: float = 0.0, bound: int = DEFAULT_BOUND,
                 clock: Callable[[], float] = time.monotonic, name: str = "") -> None:
        self.socket = socket
        self.delay = check_delay(delay)
        self.bound = bound
        self.clock = clock
        self.name = name
        self._queue: deque[tuple[float, list[Any], bool]] = deque()
        self.blocked = False  # the last write stopped because the peer took no more
        self.sent = 0
        self.late_total = 0.0  # seconds past their due times, summed (only with a delay)
        self.late_max = 0.0

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, message: Message, envelope: Sequence[bytes] = ()) -> None:
        """Queue `message`; encoded now (its tensor frames share the arrays' memory until written)."""
        frames = [*envelope, *encode(message)]
        copy = sum(memoryview(frame).nbytes for frame in frames) < ZERO_COPY_THRESHOLD
        self._queue.append((self.clock() + self.delay if self.delay else 0.0, frames, copy))

    def write(self) -> int:
        """Send every due message the peer takes now, in order; returns how many left."""
        queue = self._queue
        count = 0
        while queue:
            due, frames, copy = queue[0]
            if due:
                now = self.clock()
                if due > now:
                    break
            try:
                self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                self.blocked = True
                self.sent += count
                return count
            queue.popleft()
            count += 1
            if due:
                self.late_total += now - due
                self.late_max = max(self.late_max, now - due)
        self.blocked = False
        self.sent += count
        return count

    def backlog(self) -> int:
        """Due messages the peer has not taken yet (held ones are on the wire, not backlog)."""
        if not self.blocked:
            return 0
        if not self.delay:
            return len(self._queue)
        now = self.clock()
        return sum(1 for due, _, _ in self._queue if due <= now)

    @property
    def over_bound(self) -> bool:
        return self.blocked and self.backlog() >= self.bound

    @property
    def wants_write(self) -> bool:
        """Poll this socket for POLLOUT: a due message waits for the peer."""
        return self.blocked

    def next_due(self) -> Optional[float]:
        """When the head falls due, for a head held by the emulated delay (None: nothing held back)."""
        if not self._queue or self.blocked:
            return None
        due = self._queue[0][0]
        return due or None

    def drop(self) -> int:
        """Forget every queued message (the job ended, or the peer was replaced); returns how many."""
        dropped = len(self._queue)
        self._queue.clear()
        self.blocked = False
        return dropped


class Outboxes:
    """The outboxes of one side (a worker's session, the coordinator's feed), written and timed together."""

    def __init__(self, outboxes: Iterable[Outbox[Any]] = ()) -> None:
        self.all: list[Outbox[Any]] = []
        self.delayed = False
        for outbox in outboxes:
            self.add(outbox)

    def add(self, outbox: Outbox[_Socket]) -> Outbox[_Socket]:
        self.all.append(outbox)
        self.delayed = self.delayed or bool(outbox.delay)
        return outbox

    def write(self) -> int:
        return sum(outbox.write() for outbox in self.all if outbox._queue)

    def over_bound(self) -> bool:
        return any(outbox.over_bound for outbox in self.all)

    def held(self) -> int:
        return sum(len(outbox) for outbox in self.all)

    def timeout(self, longest: float) -> float:
        """Seconds a poll may wait: `longest`, but no longer than until a held message falls due (0 if one is)."""
        if not self.delayed:
            return longest
        dues = [due for due in (outbox.next_due() for outbox in self.all) if due is not None]
        if not dues:
            return longest
        return min(longest, max(0.0, min(dues) - self.all[0].clock()))

    def drop(self) -> int:
        return sum(outbox.drop() for outbox in self.all)

    def stats(self) -> dict[str, Any]:
        """The delay, how it is made, and how late the loop sent what was due: the emulation's own error."""
        delay_ms = 1000 * max((outbox.delay for outbox in self.all), default=0.0)
        sent = sum(outbox.sent for outbox in self.all)
        late = sum(outbox.late_total for outbox in self.all)
        return {"delay_ms": delay_ms, "link": describe(delay_ms), "sent": sent, "held": self.held(),
                "late_mean_ms": 1000 * late / sent if sent else 0.0,
                "late_max_ms": 1000 * max((outbox.late_max for outbox in self.all), default=0.0)}
