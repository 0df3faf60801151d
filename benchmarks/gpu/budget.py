"""Time budgets: the run has a total, each part a share of it, each run inside a part a share of what is left.

A part whose time is gone is skipped with the reason recorded, so one slow
part cannot eat the window that the others need.
"""
from __future__ import annotations

import time

__all__ = ["Budget", "OutOfTime"]


class OutOfTime(Exception):
    """Too little of a part's budget is left for the next piece of work."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def share(self, pieces_left: int, overhead: float, least: float) -> int:
        """Whole seconds for the next of `pieces_left` pieces that each also cost `overhead`; OutOfTime below `least`."""
        seconds = (self.remaining() - pieces_left * overhead) / max(1, pieces_left)
        if seconds < least:
            raise OutOfTime(f"{self.remaining():.0f}s of this part's {self.seconds:.0f}s left, "
                            f"{pieces_left} run(s) to go at {overhead:.0f}s of start-up each")
        return int(seconds)
