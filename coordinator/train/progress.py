"""A one-line progress bar on stderr: steps, accuracy and throughput, redrawn a few times a second."""
from __future__ import annotations

import logging
import sys
import time
from typing import ClassVar, Optional, TextIO

__all__ = ["EndBarLine", "Progress", "end_bar_line_before_logs"]


class Progress:
    """`start` is the step the run was at when this process began (a resumed run's checkpoint):
    rate and time left count only the steps done since, in `started`'s clock. `earlier_seconds` is the wall time
    of the run's earlier segments (`Segments.totals()`), so that a resumed run's elapsed time is the whole run's."""

    # The bar whose line a terminal's cursor is on, not yet ended: a terminal has one cursor, so there is at most one.
    # Whatever else is written there (a log record, the last message) must end it first or it runs on after the bar.
    open_line: ClassVar[Optional[Progress]] = None

    def __init__(self, total: int, label: str, enabled: bool = True, stream: TextIO = sys.stderr, *, start: int = 0,
                 earlier_seconds: float = 0.0) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.stream = stream
        self.start = start
        self.earlier_seconds = earlier_seconds
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
        if self.interactive:
            Progress.open_line = self

    def _line(self, done: int, samples: int, accuracy: float | None, now: float, shown: str = "") -> str:
        elapsed = now - self.started  # this process's: what its steps' rate and the time left are measured in
        filled = 24 * done // max(1, self.total)
        new_steps = max(0, done - self.start)  # done by this process
        new_samples = samples * new_steps / done if done else 0.0
        rate = new_samples / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) * elapsed / new_steps if new_steps else 0.0
        shown = shown or (f"test {accuracy:6.2%}" if accuracy is not None else "test   --  ")
        return (f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} steps  {shown}  "
                f"{rate:7.0f} samples/s  {self.earlier_seconds + elapsed:5.0f}s elapsed, {eta:5.0f}s left")

    def end_line(self) -> None:
        """End the bar's line on a terminal if it is the open one, so that what comes next starts a line of its own;
        the next `update` draws the bar afresh below it."""
        if Progress.open_line is self:
            Progress.open_line = None
            self.stream.write("\n")
            self.stream.flush()

    def close(self) -> None:
        self.end_line()

    @classmethod
    def end_open_line(cls) -> None:
        """End whichever bar's line is open: for a message written where the bar is not known (the CLI's last word)."""
        if cls.open_line is not None:
            cls.open_line.end_line()


class EndBarLine(logging.Filter):
    """On a log handler: a record that handler writes first ends an open bar's line (a filter on the handler runs
    only for the records it will write), so a log line never runs on after the bar's."""

    def filter(self, record: logging.LogRecord) -> bool:
        Progress.end_open_line()
        return True


def end_bar_line_before_logs() -> None:
    """Every handler of the root logger (the command line's, set up by `logging.basicConfig`) ends the bar's line
    before it writes a record."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(EndBarLine())
