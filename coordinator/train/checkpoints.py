"""A run's checkpoints: one file per stage (written by its worker) and the coordinator's data position.

A checkpoint is a consistent cut: the coordinator drains the pipeline and
flushes every stage first, so every file holds the state after the same step,
and training resumes from that step with the same batch order.

A new checkpoint is committed in two phases, so that a process dying half way
(a worker killed while another has already saved, the coordinator killed
between two stages) never leaves stage files of two different steps: every
stage saves into `next/`, then the coordinator writes `next/coordinator.json`
(the commit point, written whole or not at all) and moves the files into place.
Whoever reads the position next finishes a committed move, or throws away an
uncommitted `next/`, so the files in place always belong to one step.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dni.files import write_text_atomically, writing

__all__ = ["Checkpoints", "PENDING", "POSITION", "Position"]

log = logging.getLogger("dni.checkpoints")
POSITION = "coordinator.json"
PENDING = "next"


@dataclass(frozen=True)
class Position:
    """Where the last checkpoint cut the run: its step, the metrics lines written by then,
    the training tally gathered since the last of them (and a sequence job's own state)."""
    step: int = 0
    evaluations: int = 0
    tally: dict[str, Any] = field(default_factory=dict)
    sequence: dict[str, Any] = field(default_factory=dict)  # a sequence job's curve, curriculum and text position


class Checkpoints:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.position_path = directory / POSITION
        self.pending = directory / PENDING

    def stage(self, index: int) -> Path:
        """Where stage `index` restores from."""
        return self.directory / f"stage{index}.pt"

    def staged(self, index: int) -> Path:
        """Where stage `index` saves a checkpoint that is not committed yet."""
        return self.pending / f"stage{index}.pt"

    def begin(self) -> None:
        """Start a checkpoint: nothing left over from one that was never committed."""
        self.settle()
        with writing(self.pending):
            self.pending.mkdir(parents=True, exist_ok=True)

    def discard_uncommitted(self) -> None:
        """After a checkpoint failed: its files go, unless it was committed (then they move into place)."""
        try:
            self.settle()
        except OSError as error:  # the failure that brought us here is what gets reported
            log.warning("could not clear %s: %s", self.pending, error)

    def record(self, position: Position) -> None:
        """Commit the checkpoint every stage has saved with `staged`: the position, then the files into place."""
        self.pending.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.pending / POSITION, json.dumps(asdict(position)))
        self.settle()

    def settle(self) -> None:
        """Finish a committed checkpoint's move; throw away an uncommitted one."""
        if not self.pending.is_dir():
            return
        committed = (self.pending / POSITION).is_file()
        for path in sorted(self.pending.iterdir()):
            if committed and path.name.startswith("stage") and path.suffix == ".pt":
                os.replace(path, self.directory / path.name)
            elif path.name != POSITION:
                path.unlink(missing_ok=True)  # a stage file of an uncommitted checkpoint, or half of one
        if committed:
            os.replace(self.pending / POSITION, self.position_path)
        try:
            self.pending.rmdir()
        except OSError:  # a worker of a dead coordinator still writing: its file goes next time
            pass

    def position(self) -> Position:
        """The last checkpoint's position; the start of the run if there is none."""
        self.settle()
        if not self.position_path.is_file():
            return Position()
        return Position(**json.loads(self.position_path.read_text()))
