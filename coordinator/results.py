"""A run's folder: the job as run, one metrics line per evaluation, a summary, the trained weights."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from dni.errors import DniError
from dni.files import write_text_atomically

from dni.coordinator.job import Job, job_as_table

__all__ = ["NotARunError", "RunFolder", "read_metrics"]


class NotARunError(DniError, ValueError):
    """A folder given as a run (to `dni plot`, `--resume`) that holds no run."""

    exit_code = 2


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.summary_path = path / "summary.json"
        self.plot_path = path / "accuracy.png"

    @classmethod
    def create(cls, job: Job) -> "RunFolder":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(job.results) / f"{job.name}-{job.mode.value}-{stamp}"
        path, suffix = base, 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        path.mkdir(parents=True)
        folder = cls(path)
        folder.write_json("job.json", job_as_table(job))
        return folder

    @classmethod
    def open(cls, path: Path) -> "RunFolder":
        if not (path / "job.json").is_file():
            raise NotARunError(f"{path} is not a run folder (no job.json)")
        return cls(path)

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        write_text_atomically(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def write_json(self, name: str, data: Any) -> None:
        write_text_atomically(self.path / name, json.dumps(data, indent=2))

    def save_state(self, states: list[dict[str, torch.Tensor]]) -> None:
        torch.save({f"stage{index}": state for index, state in enumerate(states)}, self.path / "model.pt")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
