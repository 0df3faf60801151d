"""A run's checkpoints: one file per stage (written by its worker) and the coordinator's data position.

A checkpoint is a consistent cut: the coordinator drains the pipeline and
flushes every stage first, so every file holds the state after the same step,
and training resumes from that step with the same batch order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Checkpoints:
    def __init__(self, directory: Path, stages: int) -> None:
        self.directory = directory
        self.stages = stages
        self.position = directory / "coordinator.json"

    def stage(self, index: int) -> Path:
        return self.directory / f"stage{index}.pt"

    def record(self, step: int, evaluations: int, tally: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.position.with_suffix(".partial")
        partial.write_text(json.dumps({"step": step, "evaluations": evaluations, "tally": vars(tally)}))
        partial.replace(self.position)

    def _read(self) -> dict[str, Any]:
        return json.loads(self.position.read_text()) if self.position.is_file() else {"step": 0, "evaluations": 0, "tally": {}}

    def step(self) -> int:
        return int(self._read()["step"])

    def evaluations(self) -> int:
        return int(self._read()["evaluations"])

    def tally(self) -> dict[str, Any]:
        return dict(self._read()["tally"])

    def records(self, metrics_path: Path) -> list[dict[str, Any]]:
        """The metrics lines written up to the checkpoint (what a resumed run keeps)."""
        if not metrics_path.is_file():
            return []
        lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        return lines[:self.evaluations()]
