"""The emulated link delay's vocabulary: how reports name it, and polls that wait no longer than until a due time.

A link that takes time is emulated in the sender's outbox (`dni.protocol.outbox`):
a data message is due `link_delay_ms` after it was put, and the event loop
polls no longer than until the next one falls due. Control messages and
heartbeats never wait there.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

__all__ = ["describe", "poll_within", "split_wait"]

POLL_RESOLUTION = 1e-3  # zmq_poll waits in whole milliseconds
Polled = TypeVar("Polled")


def describe(delay_ms: float) -> str:
    """How every report names the link, so an emulated delay is never mistaken for a measured network."""
    if not delay_ms:
        return "no added delay"
    return f"emulated link delay {delay_ms:g} ms per hop (held in the sender's outbox)"


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
