"""How many lost workers a run replaces, and how it keeps trying while replacements are lost too.

A long run meets faults at some rate, not a fixed number of them, so the limit
is a rate: at most `max_recoveries` replacements within any `recovery_window`
seconds. A soak that kills a worker every 15 s never reaches the defaults
(30 within 300 s); a stage that dies again as soon as it is replaced does, within
minutes, and the run ends saying which limit it hit and how to raise it. So does
a run that makes no progress between faults: `max_recoveries` recoveries in a
row that all resume from the same checkpoint end it too.

A recovery may itself be hit: the replacement dies before it answers, another
worker dies while the stages are restored, a worker freezes during the restore.
That is one more loss, spent from the same budget, and tried again after a
short backoff (doubling from BACKOFF_SECONDS up to BACKOFF_LIMIT) so that a
cause that needs a moment (a port, a file system) gets it.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, TypeVar

from dni.coordinator.pools.pipeline import Pipeline
from dni.errors import StageFailed, WorkerLost

if TYPE_CHECKING:
    from dni.coordinator.pools.pool import WorkerPool

__all__ = ["BACKOFF_LIMIT", "BACKOFF_SECONDS", "RecoveryBudget", "RecoveryLimit", "Replacements", "backoff", "recover",
           "recovering"]

log = logging.getLogger("dni.recovery")
BACKOFF_SECONDS = 0.5
BACKOFF_LIMIT = 8.0  # well inside a worker's patience with a silent coordinator (20 s), though it is kept beating
Attempt = TypeVar("Attempt")


class RecoveryLimit(StageFailed):
    """More workers were lost than the job allows, within the window or without progress: the run gives up."""


class RecoveryBudget:
    """At most `limit` recoveries within any `window` seconds (`limit` 0: none at all), and at most `limit` in a row
    that resume from the same checkpoint: a worker that dies at the same step every time, or faults that come
    faster than checkpoints, would otherwise roll the run back forever at any rate."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.recent: deque[float] = deque()  # when each recovery inside the window began
        self.resumed_from = -1  # the checkpoint step the latest recoveries resumed from
        self.in_a_row = 0  # how many of them did, one after the other

    def resuming_from(self, step: int, loss: WorkerLost) -> None:
        """A recovery resumes from the checkpoint at `step`; raise RecoveryLimit if `limit` before it did too."""
        self.in_a_row = self.in_a_row + 1 if step == self.resumed_from else 1
        self.resumed_from = step
        if self.in_a_row > self.limit:
            raise RecoveryLimit(loss.stage, f"{self.in_a_row} workers lost in a row without the run getting past its "
                                            f"checkpoint at step {step}: giving up (max_recoveries = {self.limit}; "
                                            f"checkpoint more often, checkpoint_every, if faults come faster than "
                                            f"checkpoints); the last: {loss}")

    def spend(self, loss: WorkerLost) -> None:
        """Count one recovery for `loss`; raise RecoveryLimit, naming the limit and the loss, if none is left."""
        now = self.clock()
        while self.recent and now - self.recent[0] >= self.window:
            self.recent.popleft()
        if len(self.recent) >= self.limit:
            raise RecoveryLimit(loss.stage, f"{len(self.recent) + 1} workers lost within {_duration(self.window)}: giving up "
                                            f"(max_recoveries = {self.limit} within recovery_window = {self.window:g} s; "
                                            f"raise max_recoveries or shorten recovery_window to go on); the last: {loss}")
        self.recent.append(now)


class Replacements:
    """The lost stages whose new workers are not answering yet. A recovery hit by a second loss still owes the
    first its replacement: each try brings back every stage lost so far, not only the latest."""

    def __init__(self, pool: WorkerPool, pipeline: Pipeline) -> None:
        self.pool = pool
        self.pipeline = pipeline
        self.owed: dict[int, WorkerLost] = {}

    def bring_back(self, loss: WorkerLost) -> None:
        """A new worker for `loss`'s stage and for every stage still owed one, each answering at its address."""
        self.owed[loss.stage] = loss
        self.pipeline.excused = set(self.owed)  # their silence and dropped connections are known already
        for stage, lost in sorted(self.owed.items()):
            endpoints = self.pool.replace(lost, self.pipeline.keep_alive)
            self.pipeline.rejoin(stage, endpoints, self.pool.rejoin_seconds, self.pool.spawns)
            del self.owed[stage]
            self.pipeline.excused.discard(stage)


def backoff(retry: int) -> float:
    """Seconds to wait before the `retry`-th try of one recovery (0 for the first)."""
    return 0.0 if retry == 0 else min(BACKOFF_LIMIT, BACKOFF_SECONDS * 2 ** (retry - 1))


def recover(budget: RecoveryBudget, loss: WorkerLost, attempt: Callable[[WorkerLost, int], Attempt],
            wait: Callable[[float], None]) -> Attempt:
    """`attempt(loss, retry)` until it succeeds: each try is spent from `budget`, and a try lost to another fault
    (`WorkerLost`) is followed, after `wait(backoff)`, by a try for that fault. A try that raises `loss` itself
    (`WorkerPool.replace`: no worker can take over) ends the recovery."""
    retry = 0
    while True:
        budget.spend(loss)
        wait(backoff(retry))
        try:
            return attempt(loss, retry)
        except WorkerLost as again:
            if again is loss:  # the pool gave it back: nothing can replace that worker
                raise
            log.warning("the recovery was itself hit: %s", again)
            loss, retry = again, retry + 1


def recovering(budget: RecoveryBudget, attempt: Callable[[WorkerLost, int], int], wait: Callable[[float], None],
               start: Callable[[], int], train: Callable[[int], Attempt]) -> Attempt:
    """`train(start())`: a trainer's whole run, from the step `start` gives (configuring every stage) to its end;
    each worker lost on the way is recovered (`recover` with `attempt`) and training goes on from the step the
    recovery gives."""
    try:
        step = start()
    except WorkerLost as loss:
        step = recover(budget, loss, attempt, wait)
    while True:
        try:
            return train(step)
        except WorkerLost as loss:
            step = recover(budget, loss, attempt, wait)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} s"
