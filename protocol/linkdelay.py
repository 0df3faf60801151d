"""An emulated link delay on the sending side: data messages held back a fixed time, then sent in order.

This machine's kernel has no `netem`, so a link that takes time is emulated in
the transport itself. The sender puts a data message into a `DelayQueue`,
which stamps it due at now + the delay, and goes on computing; its event loop
sends what is due (`send_due`) and polls no longer than until the next message
falls due (`timeout`, `poll_within`). The delay is the same for every message,
so due times never decrease and one deque sent from its head keeps the order
in which messages were put. Nothing leaves before its due time; it leaves
late by however long the sender was busy computing when it fell due, which
`stats` reports as the emulation's own error.

The queue holds no socket: whoever drains it sends, from the thread that owns
the sockets, and may wait there for a full peer (backpressure) as an undelayed
send would. A held message is in flight, as if it were on the wire. Control
messages and heartbeats never go through it. It is pure (a clock can be passed
in), so the rule is tested without a socket.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Hashable, Optional, TypeVar

__all__ = ["DelayQueue", "describe", "poll_within", "split_wait"]

POLL_RESOLUTION = 1e-3  # zmq_poll waits in whole milliseconds
Polled = TypeVar("Polled")


class DelayQueue:
    """Messages held `delay` seconds from when they were put, then handed on in the order they were put."""

    def __init__(self, delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"a link delay must be a non-negative number of seconds, got {delay!r}")
        self.delay = delay
        self.clock = clock
        self._held: deque[tuple[float, Hashable, Any]] = deque()
        self.sent = 0  # messages handed on so far
        self.late_total = 0.0  # seconds past their due time, summed: how far the sender's loop lagged
        self.late_max = 0.0

    def __len__(self) -> int:
        return len(self._held)

    def put(self, destination: Hashable, item: Any) -> float:
        """Hold `item` for `destination` until now + delay; returns that due time."""
        due = self.clock() + self.delay
        self._held.append((due, destination, item))
        return due

    def next_due(self) -> Optional[float]:
        """The earliest due time held (the head's), None when nothing is held."""
        return self._held[0][0] if self._held else None

    def is_due(self) -> bool:
        """Whether a held message is due now (so that a caller times a send only when there is one)."""
        return bool(self._held) and self._held[0][0] <= self.clock()

    def timeout(self, longest: float) -> float:
        """Seconds a poll may wait: `longest`, but no longer than until the next message is due (0 if one is)."""
        due = self.next_due()
        if due is None:
            return longest
        return min(longest, max(0.0, due - self.clock()))

    def send_due(self, send: Callable[[Hashable, Any], None]) -> int:
        """Call `send(destination, item)` for every held item that is due, in the order they were put.

        An item leaves the queue only once `send` returned, so one whose send raised (a send given up when
        its job ended) stays at the head and nothing behind it overtakes it. Returns how many were sent.
        """
        count = 0
        while self._held:
            due, destination, item = self._held[0]
            now = self.clock()
            if due > now:
                break
            send(destination, item)
            self._held.popleft()
            self.sent += 1
            count += 1
            self.late_total += now - due
            self.late_max = max(self.late_max, now - due)
        return count

    def drop(self) -> int:
        """Forget everything held (its job ended, or its destination was replaced); returns how many were dropped."""
        dropped = len(self._held)
        self._held.clear()
        return dropped

    def stats(self) -> dict[str, Any]:
        """The delay, how it is made, and how late the sender's loop sent what was due: the emulation's own error."""
        return {"delay_ms": 1000 * self.delay, "link": describe(1000 * self.delay), "sent": self.sent, "held": len(self),
                "late_mean_ms": 1000 * self.late_total / self.sent if self.sent else 0.0, "late_max_ms": 1000 * self.late_max}


def describe(delay_ms: float) -> str:
    """How every report names the link, so an emulated delay is never mistaken for a measured network."""
    if not delay_ms:
        return "no added delay"
    return f"emulated link delay {delay_ms:g} ms per hop (held in the sender's queue; no netem)"


def split_wait(seconds: float) -> tuple[float, int]:
    """A wait of `seconds` as (sleep seconds, poll milliseconds).

    A ZeroMQ poll waits whole milliseconds: rounding up would send late, rounding down to 0 would spin. So a
    wait of a millisecond or more polls for the whole milliseconds in it (the rest is waited next time round),
    and a shorter one is slept, then polled without waiting.
    """
    if seconds >= POLL_RESOLUTION:
        return 0.0, int(seconds * 1000)
    return max(0.0, seconds), 0


def poll_within(poll: Callable[[int], Polled], seconds: float) -> Polled:
    """`poll(milliseconds)` for a wait of `seconds`, by the rule of `split_wait`."""
    sleep, milliseconds = split_wait(seconds)
    if sleep:
        time.sleep(sleep)
    return poll(milliseconds)
