"""The schedule: what a stage may take next, and when the coordinator may feed another batch.

One rule each, apart from the sockets that carry them out (as
torch.distributed.pipelining keeps its schedules apart from its stages):

- A stage (`StageSchedule.turn`) always hears control and always takes targets
  (a target only ever frees room); it takes a new batch only while its window
  of batches awaiting targets has room (one batch when locked: that is what
  makes `backprop` update-locked) and no outbox is over its bound (a peer that
  takes nothing more stops new work upstream instead of piling it up here).
- The coordinator (`FeedSchedule.may_feed`) keeps at most `credit` training
  batches unanswered (the window plus one per stage keeps every stage busy) and
  feeds nothing while its feed outbox is over its bound.

The time a stage spends polling is its waiting, named by what it waits for.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FeedSchedule", "StageSchedule", "Turn", "Wait"]


class Wait(str, enum.Enum):
    """What a stage's poll waits for: the timeline activity its waiting counts as."""
    INPUT = "wait_input"  # room for a batch: waiting for one to arrive
    GRADIENT = "wait_gradient"  # window full: waiting for a target
    SEND = "wait_send"  # an outbox over its bound: waiting for a peer to take it


@dataclass(frozen=True)
class Turn:
    """One turn of a stage's event loop: the sockets to read (control always) and what the wait counts as."""
    batches: bool
    targets: bool
    waiting: Wait


TAKE_ANY = Turn(batches=True, targets=True, waiting=Wait.INPUT)
TAKE_TARGETS = Turn(batches=False, targets=True, waiting=Wait.GRADIENT)
HELD_BACK = Turn(batches=False, targets=True, waiting=Wait.SEND)


@dataclass(frozen=True)
class StageSchedule:
    window: int
    locked: bool = False

    @property
    def capacity(self) -> int:
        """Batches that may await their targets at once."""
        return 1 if self.locked else self.window

    def turn(self, in_flight: int, outbox_over_bound: bool) -> Turn:
        if outbox_over_bound:
            return HELD_BACK
        return TAKE_ANY if in_flight < self.capacity else TAKE_TARGETS


@dataclass(frozen=True)
class FeedSchedule:
    credit: int

    def may_feed(self, sent: int, done: int, feed_over_bound: bool) -> bool:
        """Whether another training batch may go out now."""
        return sent - done < self.credit and not feed_over_bound
