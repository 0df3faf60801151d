"""A one-line progress bar on stderr: steps, accuracy and throughput, redrawn a few times a second."""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """`start` is the step the run was at when this process began (a resumed run's checkpoint):
    rate and time left count only the steps done since, in `started`'s clock."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream: TextIO = sys.stderr, *, start: int = 0) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.stream = stream
        self.start = start
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.interactive = stream.isatty()
        self.next_percent = 10

    def update(self, done: int, samples: int, accuracy: float | None, shown: str = "") -> None:
        """`done` steps and `samples` examples in all, the steps before `start` included; `shown` replaces the test
        accuracy (a sequence job's length or bits per character)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.interactive and now - self.last_draw < 0.25 and done < self.total:
            return
        percent = 100 * done // max(1, self.total)
        if not self.interactive and percent < self.next_percent and done < self.total:
            return
        self.last_draw = now
        self.next_percent = percent // 10 * 10 + 10
        self.stream.write(("\r" if self.interactive else "") + self._line(done, samples, accuracy, now, shown) + ("" if self.interactive else "\n"))
        self.stream.flush()

    def _line(self, done: int, samples: int, accuracy: float | None, now: float, shown: str = "") -> str:
        elapsed = now - self.started
        filled = 24 * done // max(1, self.total)
        new_steps = max(0, done - self.start)  # done by this process
        new_samples = samples * new_steps / done if done else 0.0
        rate = new_samples / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) * elapsed / new_steps if new_steps else 0.0
        shown = shown or (f"test {accuracy:6.2%}" if accuracy is not None else "test   --  ")
        return (f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} steps  {shown}  "
                f"{rate:7.0f} samples/s  {elapsed:5.0f}s elapsed, {eta:5.0f}s left")

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
