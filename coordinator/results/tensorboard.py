"""TensorBoard curves of a run, written as the run goes (job setting `tensorboard`, flag `--tensorboard DIR`).

Researchers in this field watch runs live in TensorBoard and compare them there. Every
evaluation's metrics record (the line the trainer appends to metrics.jsonl) becomes
TensorBoard scalars and histograms at the training step it was taken: train and test
accuracy and loss, samples/s, and per stage the fraction of the worker's wall time spent
in each activity (since the worker's start of the job, as metrics.jsonl counts it) and its
staleness histogram. Each run writes into DIR/<run folder name>, so runs sharing one DIR
show side by side in one TensorBoard.

`tensorboard` is an optional extra (pip install 'dni[tensorboard]'): torch.utils.tensorboard
is imported only when a job asks for it, and `require_tensorboard` lets a run fail before
any worker starts when the package is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from dni.coordinator.jobs.job import Job
from dni.errors import ConfigError
from dni.workers.stage.timing import ACTIVITIES, grouped

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["INSTALL_HINT", "TensorBoardLog", "require_tensorboard", "scalars", "staleness_histograms"]

INSTALL_HINT = "pip install 'dni[tensorboard]'"
RECORD_SCALARS = {  # metrics record key -> TensorBoard tag
    "train_accuracy": "accuracy/train", "test_accuracy": "accuracy/test",
    "train_loss": "loss/train", "test_loss": "loss/test",
    "samples_per_second": "throughput/samples_per_second",
}


def _summary_writer_class() -> type[SummaryWriter]:
    """torch.utils.tensorboard.SummaryWriter, imported on demand; a missing package is a configuration error."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ConfigError(f"tensorboard logging (--tensorboard / tensorboard = \"DIR\") needs the tensorboard package, "
                          f"which cannot be imported ({error}): {INSTALL_HINT}") from error
    return SummaryWriter


def require_tensorboard(job: Job) -> None:
    """Fail now, before data or workers, if the job wants TensorBoard logging and the package is missing."""
    if job.tensorboard:
        _summary_writer_class()


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """Tag -> value of one metrics record: the run's curves (each head's, for several), every stage's activity
    fractions and each output edge's synthesizer loss (and synthetic loss)."""
    values = {tag: float(record[key]) for key, tag in RECORD_SCALARS.items() if key in record}
    for head, scores in record.get("heads", {}).items():  # a graph of several heads: each head's curves
        values.update({f"heads/{head}/{key}": float(value) for key, value in scores.items()})
    for worker in record.get("workers", []):
        for activity, fraction in _activity_fractions(worker).items():
            values[f"stage{worker['stage']}/fraction/{activity}"] = fraction
        for edge, metrics in worker.get("edges", {}).items():  # each output edge's synthesizer (and sl's synthetic loss)
            values.update({f"stage{worker['stage']}/edge/{edge}/{name}": float(value) for name, value in metrics.items()})
    return values


def _activity_fractions(worker: Mapping[str, Any]) -> dict[str, float]:
    """Each activity's share of the worker's wall time, plus each group's (compute, transport, waiting, ...)."""
    wall = float(worker.get("wall", 0.0))
    if wall <= 0:
        return {}
    fractions = {activity: float(worker.get("time", {}).get(activity, 0.0)) / wall for activity in ACTIVITIES}
    fractions.update({group: seconds / wall for group, seconds in grouped(worker.get("time", {})).items()
                      if group not in fractions})
    return fractions


def staleness_histograms(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Tag -> add_histogram_raw arguments for every stage that has a staleness count; one bucket per integer."""
    histograms = {}
    for worker in record.get("workers", []):
        counts = {int(staleness): int(count) for staleness, count in worker.get("staleness", {}).items() if count}
        if counts:
            histograms[f"stage{worker['stage']}/staleness"] = _integer_histogram(counts)
    return histograms


def _integer_histogram(counts: Mapping[int, int]) -> dict[str, Any]:
    """A histogram of integer values: bucket k holds value k, its upper limit k + 0.5 (TensorBoard's right edges)."""
    low, high = min(counts), max(counts)
    return {
        "min": low, "max": high, "num": sum(counts.values()),
        "sum": sum(value * count for value, count in counts.items()),
        "sum_squares": sum(value * value * count for value, count in counts.items()),
        "bucket_limits": [value + 0.5 for value in range(low, high + 1)],
        "bucket_counts": [counts.get(value, 0) for value in range(low, high + 1)],
    }


class TensorBoardLog:
    """One run's TensorBoard event files in DIR/<run folder name>; does nothing when the job sets no DIR."""

    def __init__(self, job: Job, run_folder: Path) -> None:
        self.directory: Optional[Path] = Path(job.tensorboard) / Path(run_folder).name if job.tensorboard else None
        self._writer_class = _summary_writer_class() if self.directory else None
        self._writer: Optional[SummaryWriter] = None
        self._last_step: Optional[int] = None

    def write(self, record: Mapping[str, Any]) -> None:
        """Log one metrics record at its training step, and flush it so a running TensorBoard sees it at once."""
        if self.directory is None:
            return
        step = int(record["step"])
        writer = self._open(step)
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, step)
        for tag, histogram in staleness_histograms(record).items():
            writer.add_histogram_raw(tag, global_step=step, **histogram)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self, step: int) -> SummaryWriter:
        """The writer, opened at the first record and again whenever a step is not past the last one written.

        A step that goes back is a resumed run or one rolled back to a checkpoint: opening with
        purge_step makes TensorBoard hide the abandoned attempt's points from that step on.
        """
        assert self._writer_class is not None  # there is one whenever there is a DIR, the only case that writes
        if self._writer is None or (self._last_step is not None and step <= self._last_step):
            self.close()
            self._writer = self._writer_class(str(self.directory), purge_step=step)
        self._last_step = step
        return self._writer
