"""Which sockets a worker listens to next, and what its waiting counts as.

This one decision is what makes `backprop` update-locked and keeps the
unlocked modes bounded: a stage listens for new batches only while its window
of batches awaiting targets has room (the window and the mode are folded into
`can_take_batch` by the stage's compute), for targets whenever it serves a job,
and for control always. The time spent polling is the stage's waiting: for
input while it could take a batch, for a gradient while its window is full.
Kept pure, so the rule is tested without a socket.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["PollSet", "sockets_to_poll"]


@dataclass(frozen=True)
class PollSet:
    """The sockets to poll (control always) and the activity the wait is timed as (None: no job, no timeline)."""
    forward: bool
    backward: bool
    waiting: Optional[str]
    control: bool = True


IDLE = PollSet(forward=False, backward=False, waiting=None)


def sockets_to_poll(configured: bool, can_take_batch: bool) -> PollSet:
    """A worker without a job hears control only; with one, targets always and batches while its window has room."""
    if not configured:
        return IDLE
    return PollSet(forward=can_take_batch, backward=True, waiting="wait_input" if can_take_batch else "wait_gradient")
