"""Where a worker's wall time goes: per-activity totals and, optionally, spans for timelines.

On a GPU, kernels run after the call that queued them has returned. A timeline
given `settle` (a device synchronisation) waits for them at the end of each
compute activity, so their time counts as compute rather than as the
transport that would otherwise wait for them.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

__all__ = ["ACTIVITIES", "COMPUTE", "LOOP", "MAX_SPANS", "Timeline", "WAITING", "spans_from_arrays"]

COMPUTE = ("forward", "backward", "synthesizer")
WAITING = ("wait_input", "wait_gradient")
LOOP = "loop"  # between timed activities: the worker's own dispatch, checks and bookkeeping
ACTIVITIES = (*COMPUTE, *WAITING, "transport", "control", LOOP)
MAX_SPANS = 200_000


class Timeline:
    def __init__(self, record_spans: bool = False, settle: Optional[Callable[[], None]] = None) -> None:
        self.record_spans = record_spans
        self.settle = settle
        self.totals: dict[str, float] = defaultdict(float)
        self.spans: list[tuple[str, float, float]] = []
        self._start_clock()

    @contextmanager
    def __call__(self, activity: str) -> Iterator[None]:
        start = time.perf_counter()
        self.totals[LOOP] += start - self._last_end  # so the activities add up to the wall time by construction
        try:
            yield
            if self.settle is not None and activity in COMPUTE:
                self.settle()
        finally:
            end = self._last_end = time.perf_counter()
            self.totals[activity] += end - start
            if self.record_spans and len(self.spans) < MAX_SPANS:
                self.spans.append((activity, start + self._unix_offset, end + self._unix_offset))

    def restart(self) -> float:
        """Start counting afresh; returns the seconds counted so far."""
        elapsed = self.wall()
        self.totals.clear()
        self.spans.clear()
        self._start_clock()
        return elapsed

    def _start_clock(self) -> None:
        self.started = time.time()
        self._unix_offset = time.time() - time.perf_counter()
        self._last_end = time.perf_counter()

    def wall(self) -> float:
        return time.time() - self.started

    def span_arrays(self) -> dict[str, np.ndarray]:
        """The spans as two arrays, to travel as raw frames: a long run's spans outgrow any message header."""
        return {
            "span_activity": np.array([ACTIVITIES.index(activity) for activity, _, _ in self.spans], dtype=np.uint8),
            "span_time": np.array([(start, end) for _, start, end in self.spans], dtype=np.float64).reshape(-1, 2),
        }


def spans_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(activity, start, end) spans back from `Timeline.span_arrays`."""
    return [(ACTIVITIES[code], float(start), float(end)) for code, (start, end) in zip(arrays["span_activity"], arrays["span_time"])]
