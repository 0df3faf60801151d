"""Where a worker's wall time goes: per-activity totals and, optionally, spans for timelines."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

COMPUTE = ("forward", "backward", "synthesizer")
WAITING = ("wait_input", "wait_gradient")
ACTIVITIES = (*COMPUTE, *WAITING, "transport", "control")
MAX_SPANS = 200_000


class Timeline:
    def __init__(self, record_spans: bool = False) -> None:
        self.record_spans = record_spans
        self.totals: dict[str, float] = defaultdict(float)
        self.spans: list[tuple[str, float, float]] = []
        self.started = time.time()
        self._unix_offset = time.time() - time.perf_counter()

    @contextmanager
    def __call__(self, activity: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.totals[activity] += end - start
            if self.record_spans and len(self.spans) < MAX_SPANS:
                self.spans.append((activity, start + self._unix_offset, end + self._unix_offset))

    def restart(self) -> float:
        """Start counting afresh; returns the seconds counted so far."""
        elapsed = self.wall()
        self.totals.clear()
        self.spans.clear()
        self.started = time.time()
        self._unix_offset = time.time() - time.perf_counter()
        return elapsed

    def wall(self) -> float:
        return time.time() - self.started
