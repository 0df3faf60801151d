"""A run's folder: the job as run, one metrics line per evaluation, a summary, the trained weights.

While a coordinator runs it, the folder names that process (`dni.lifetime.claim`);
one left by a coordinator that was killed is found by the next run beside it and
marked: its uncommitted checkpoint thrown away, its summary saying "killed" and
where --resume continues."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from dni.coordinator.train.checkpoints import Checkpoints
from dni.coordinator.train.segments import Segments
from dni.errors import DniError
from dni.files import save_atomically, write_text_atomically, writing
from dni.lifetime import abandoned_by, release

from dni.coordinator.jobs.job import Job, job_as_table, job_from_table

__all__ = ["NotARunError", "RunComplete", "RunFolder", "mark_abandoned_runs", "read_metrics"]

log = logging.getLogger("dni.results")


class NotARunError(DniError, ValueError):
    """A folder given as a run (to `dni plot`, `--resume`) that holds no run."""

    exit_code = 2


class RunComplete(DniError):
    """`--resume` of a run that has already finished: nothing to do."""

    exit_code = 0


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.job_path = path / "job.json"
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
        with writing(path):
            path.mkdir(parents=True)
        folder = cls(path)
        folder.write_json("job.json", job_as_table(job))
        return folder

    @classmethod
    def open(cls, path: Path) -> "RunFolder":
        if not cls(path).job_path.is_file():
            raise NotARunError(f"{path} is not a run folder (no job.json)")
        return cls(path)

    def stored_table(self) -> dict[str, Any]:
        """The job this run was started with, as its job.json holds it."""
        return json.loads(self.job_path.read_text())

    def stored_job(self) -> Job:
        return job_from_table(self.stored_table(), str(self.job_path))

    def refuse_if_complete(self, hint: str = "") -> None:
        """Raise RunComplete if this run has finished (a summary without a status is a finished one)."""
        if not self.summary_path.is_file():
            return
        summary = json.loads(self.summary_path.read_text())
        if summary.get("status", "complete") == "complete":
            raise RunComplete(f"{self.path} already finished ({_outcome(summary)}); nothing to resume{hint}")

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        write_text_atomically(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with writing(self.metrics_path), self.metrics_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def write_json(self, name: str, data: Any) -> None:
        write_text_atomically(self.path / name, json.dumps(data, indent=2))

    def save_state(self, states: list[dict[str, torch.Tensor]]) -> None:
        weights = {f"stage{index}": state for index, state in enumerate(states)}
        save_atomically(self.path / "model.pt", weights)

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.path / "checkpoints")

    def mark_if_abandoned(self) -> None:
        """If the coordinator that ran this folder is gone without recording its stop, record it now."""
        owner = abandoned_by(self.path)
        if owner is None:
            return
        self.checkpoints.discard_uncommitted()
        step = self.checkpoints.position().step
        segments = Segments(self.path)
        segments.mark_killed()
        segments.write()
        if not self.summary_path.is_file():
            self.write_json("summary.json", {"status": "killed", "error": f"its coordinator (pid {owner}) was killed",
                                             "failed_stage": None, "resume_from_step": step})
        release(self.path)
        log.warning("%s was left by a coordinator that is gone (pid %d): marked killed; --resume %s continues from step %d",
                    self.path, owner, self.path, step)


def mark_abandoned_runs(parent: Path) -> None:
    """Mark the run folders under `parent` whose coordinators were killed (see `RunFolder.mark_if_abandoned`);
    one that cannot be marked (a read-only folder) is only logged."""
    for path in parent.glob("*/owner.json"):
        try:
            RunFolder(path.parent).mark_if_abandoned()
        except OSError as error:
            log.warning("could not mark %s, left by a coordinator that is gone: %s", path.parent, error)


def _outcome(summary: dict[str, Any]) -> str:
    """What a finished run's summary says of its result, in a few words."""
    if "max_length_solved" in summary:
        return f"{summary['batches']} batches, length {summary['max_length_solved']} solved"
    if "test_bits_per_char" in summary:
        return f"{summary['batches']} batches, {summary['test_bits_per_char']:.3f} bits per character"
    return f"{summary.get('steps')} steps, test accuracy {summary.get('test_accuracy', 0):.2%}"


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
