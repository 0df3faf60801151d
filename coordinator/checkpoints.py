"""A run's checkpoints: one file per stage (written by its worker) and the coordinator's data position.

A checkpoint is a consistent cut: the coordinator drains the pipeline and
flushes every stage first, so every file holds the state after the same step,
and training resumes from that step with the same batch order.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dni.files import write_text_atomically


@dataclass(frozen=True)
class Position:
    """Where the last checkpoint cut the run: its step, the metrics lines written by then,
    and the training tally gathered since the last of them."""
    step: int = 0
    evaluations: int = 0
    tally: dict[str, Any] = field(default_factory=dict)


class Checkpoints:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.position_path = directory / "coordinator.json"

    def stage(self, index: int) -> Path:
        return self.directory / f"stage{index}.pt"

    def record(self, position: Position) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.position_path, json.dumps(asdict(position)))

    def position(self) -> Position:
        """The last checkpoint's position; the start of the run if there is none."""
        if not self.position_path.is_file():
            return Position()
        return Position(**json.loads(self.position_path.read_text()))
