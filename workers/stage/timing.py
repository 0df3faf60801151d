"""Where a worker's wall time goes: per-activity totals and, when asked, spans for timelines.

A worker's loop marks each boundary with `lap(activity)`, which charges the
time since the previous mark to `activity`: one clock read and one addition,
so timing every part of a step costs well under a microsecond a part and the
activities add up to the wall time by construction.

On a GPU, kernels run after the call that queued them has returned, so a lap
of a compute activity measures only the queuing. A timeline given a
`DeviceClock` also records a CUDA event at each lap; the time between
consecutive events is the device's, read back once the events have completed
(`device_totals`), so nothing waits for the device to time it.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Mapping, Optional

import numpy as np

__all__ = ["ACTIVITIES", "COMPUTE", "DeviceClock", "GROUPS", "LOOP", "MAX_SPANS", "TRANSPORT", "Timeline", "WAITING",
           "grouped", "spans_from_arrays"]

COMPUTE = ("forward", "synthetic", "backward", "synthesizer", "optimizer")
TRANSPORT = ("receive", "decode", "checks", "to_device", "to_host", "encode", "send")
WAITING = ("wait_input", "wait_gradient", "wait_send")
LOOP = "loop"  # the worker's own dispatch and bookkeeping between the parts above
ACTIVITIES = (*COMPUTE, *TRANSPORT, *WAITING, "control", LOOP)
GROUPS = {"compute": COMPUTE, "transport": TRANSPORT, "waiting": WAITING, "control": ("control",), "loop": (LOOP,)}
MAX_SPANS = 200_000


class DeviceClock:
    """Device time per activity from CUDA events, read without synchronising.

    An event is recorded on the stage's stream at every lap; the device time
    between two consecutive events belongs to the activity of the later lap.
    Pairs are resolved as soon as their end event has completed.
    """

    def __init__(self, device: str) -> None:
        import torch

        self._cuda = torch.cuda
        self._stream = torch.cuda.current_stream(torch.device(device))
        self._previous = self._record()
        self._pending: deque[tuple[str, Any, Any]] = deque()
        self.totals: dict[str, float] = {}

    def _record(self) -> Any:
        event = self._cuda.Event(enable_timing=True)
        event.record(self._stream)
        return event

    def mark(self, activity: str) -> None:
        """A lap of `activity` ended now."""
        end = self._record()
        self._pending.append((activity, self._previous, end))
        self._previous = end
        self._resolve(wait=False)

    def _resolve(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0][2].query()):
            activity, begin, end = self._pending.popleft()
            if wait:
                end.synchronize()
            self.totals[activity] = self.totals.get(activity, 0.0) + begin.elapsed_time(end) / 1000

    def settled(self) -> dict[str, float]:
        """Every recorded pair resolved (waits for the device): seconds of device time per activity."""
        self._resolve(wait=True)
        return dict(self.totals)


class Timeline:
    _last: float  # perf_counter() at the previous lap (set by _start_clock)

    def __init__(self, record_spans: bool = False, device_clock: Optional[DeviceClock] = None) -> None:
        self.record_spans = record_spans
        self.device_clock = device_clock
        self.totals: dict[str, float] = dict.fromkeys(ACTIVITIES, 0.0)
        self.spans: list[tuple[str, float, float]] = []
        self._start_clock()

    def lap(self, activity: str) -> None:
        """The time since the previous lap was spent on `activity`."""
        now = time.perf_counter()
        self.totals[activity] += now - self._last
        if self.record_spans and len(self.spans) < MAX_SPANS:
            self.spans.append((activity, self._last + self._unix_offset, now + self._unix_offset))
        self._last = now
        if self.device_clock is not None:
            self.device_clock.mark(activity)

    def device_totals(self) -> dict[str, float]:
        """Seconds of device time per activity (empty without a device clock)."""
        return self.device_clock.settled() if self.device_clock is not None else {}

    def restart(self) -> float:
        """Start counting afresh; returns the seconds counted so far."""
        elapsed = self.wall()
        self.totals = dict.fromkeys(ACTIVITIES, 0.0)
        self.spans.clear()
        if self.device_clock is not None:
            self.device_clock.settled()
            self.device_clock.totals.clear()
        self._start_clock()
        return elapsed

    def _start_clock(self) -> None:
        self.started = time.time()
        self._unix_offset = time.time() - time.perf_counter()
        self._last = time.perf_counter()

    def wall(self) -> float:
        return time.time() - self.started

    def span_arrays(self) -> dict[str, np.ndarray]:
        """The spans as two arrays, to travel as raw frames: a long run's spans outgrow any message header."""
        return {
            "span_activity": np.array([ACTIVITIES.index(activity) for activity, _, _ in self.spans], dtype=np.uint8),
            "span_time": np.array([(start, end) for _, start, end in self.spans], dtype=np.float64).reshape(-1, 2),
        }


def grouped(totals: Mapping[str, float]) -> dict[str, float]:
    """Per-activity totals summed into the groups of GROUPS (compute, transport, waiting, control, loop)."""
    return {group: sum(float(totals.get(activity, 0.0)) for activity in members) for group, members in GROUPS.items()}


def spans_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(activity, start, end) spans back from `Timeline.span_arrays`."""
    return [(ACTIVITIES[code], float(start), float(end)) for code, (start, end) in zip(arrays["span_activity"], arrays["span_time"])]
