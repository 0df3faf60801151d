"""A run's folder: the job as run, one metrics line per evaluation, a summary, the trained weights."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from coordinator.job import Job


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
        folder.write_json("job.json", job_as_dict(job))
        return folder

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def write_json(self, name: str, data: Any) -> None:
        target = self.path / name
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(data, indent=2))
        partial.replace(target)

    def save_state(self, states: list[dict[str, torch.Tensor]]) -> None:
        torch.save({f"stage{index}": state for index, state in enumerate(states)}, self.path / "model.pt")


def job_as_dict(job: Job) -> dict[str, Any]:
    table = asdict(job)
    table["mode"] = job.mode.value
    return table


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
