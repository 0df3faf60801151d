"""A stage's own profile: cProfile over its event loop, summarised as microseconds per training step.

The overhead benchmark asks each worker where its time goes by function as well
as by activity (the timeline), so the two views check each other. cProfile
slows Python-heavy code, so a profiled run is never the timed one.
"""
from __future__ import annotations

import cProfile
import os
import pstats
from typing import Any

__all__ = ["StageProfile"]

TOP = 30


class StageProfile:
    def __init__(self) -> None:
        self.profiler = cProfile.Profile()
        self.profiler.enable()

    def summary(self, steps: int, top: int = TOP) -> list[dict[str, Any]]:
        """The `top` functions by own time: calls, own and cumulative microseconds per step."""
        self.profiler.disable()
        try:
            stats = pstats.Stats(self.profiler).stats  # type: ignore[attr-defined]
        finally:
            self.profiler.enable()
        per_step = 1e6 / max(1, steps)
        rows = [{"function": _name(where), "calls_per_step": calls / max(1, steps), "own_us": own * per_step,
                 "cumulative_us": cumulative * per_step}
                for where, (_, calls, own, cumulative, _) in stats.items()]
        rows.sort(key=lambda row: row["own_us"], reverse=True)
        return rows[:top]

    def stop(self) -> None:
        self.profiler.disable()


def _name(where: tuple[str, int, str]) -> str:
    path, line, function = where
    if path == "~":
        return function  # a built-in, e.g. "<method 'send_multipart' ...>"
    return f"{function} ({os.path.basename(path)}:{line})"
