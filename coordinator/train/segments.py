"""A run's segments: each `dni run` or `--resume` of one run folder is one, with its own wall time, recoveries and
re-sent batches.

summary.json gives every segment and their totals, so a run that took three
starts says what all of it cost, not only its last start. The record is kept in
the run folder (segments.json) and rewritten at every checkpoint and recovery,
so a coordinator killed outright leaves its segment as of then, marked "killed"
by the next start.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dni.files import write_text_atomically

__all__ = ["SEGMENTS", "Segment", "Segments"]

log = logging.getLogger("dni.segments")
SEGMENTS = "segments.json"


@dataclass
class Segment:
    from_step: int
    to_step: int
    started_at: float = field(default_factory=time.time)
    wall_seconds: float = 0.0
    recoveries: int = 0
    resent_batches: int = 0
    status: str = "running"  # then complete, failed, interrupted, or killed (its coordinator died without a word)


class Segments:
    """The segments of the run in `folder`; the last is this process's once `recording` has begun it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / SEGMENTS
        self.all = [Segment(**entry) for entry in self._read()]
        self.began = 0.0

    def _read(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as error:
            log.warning("%s is unreadable (%s): the segments before this one are not counted", self.path, error)
            return []

    @property
    def current(self) -> Segment:
        return self.all[-1]

    def mark_killed(self) -> None:
        """Segments still "running" belong to a coordinator that died without recording its stop."""
        for segment in self.all:
            if segment.status == "running":
                segment.status = "killed"

    @contextmanager
    def recording(self, from_step: int) -> Iterator[Segment]:
        """A new segment from `from_step`, saved as it goes; its status says how it ended if it ends by an exception."""
        self.mark_killed()
        self.all.append(Segment(from_step, from_step))
        self.began = time.monotonic()
        self.save()
        try:
            yield self.current
        except KeyboardInterrupt:
            self._end_quietly("interrupted")
            raise
        except BaseException:
            self._end_quietly("failed")
            raise

    def save(self, status: str = "running") -> None:
        """This process's segment as it stands, with `status`."""
        self.current.wall_seconds = time.monotonic() - self.began
        self.current.status = status
        self.write()

    def write(self) -> None:
        write_text_atomically(self.path, json.dumps([asdict(segment) for segment in self.all], indent=1))

    def _end_quietly(self, status: str) -> None:
        """The stop's own error matters more than this record's: a failure to write it only goes to the log."""
        try:
            self.save(status)
        except OSError as error:
            log.error("could not record the segment's end in %s: %s", self.path, error)

    def totals(self) -> dict[str, Any]:
        """What summary.json says of every segment: each, and the sums."""
        return {"segments": [asdict(segment) for segment in self.all],
                "recoveries": sum(segment.recoveries for segment in self.all),
                "resent_batches": sum(segment.resent_batches for segment in self.all),
                "total_wall_seconds": sum(segment.wall_seconds for segment in self.all)}
