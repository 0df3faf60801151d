"""What a job feeds its pipeline, as the `Trainer` asks for it: the one seam between a dataset job and a sequence job.

The trainer owns everything the two kinds of job share: the credit window, sending and receiving, stall detection,
checkpoints and recovery, segments, interrupts, the metrics requests and the summary's common fields. A `Feed` owns
only what differs: the messages of each training step (a dataset's batch, or a batch of sequences cut into chunks),
the evaluation messages slipped in between, how each result is tallied, whether the next step waits for every
result (a curriculum that picks the next length from the last error), what it adds to a checkpoint's `Position`,
its summary fields and its plot. `run.feed_for` picks the job's feed, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol

import numpy as np

from dni.coordinator.train.checkpoints import Position
from dni.coordinator.results.folder import RunFolder
from dni.protocol import Message
from dni.spec import PixelScaling

__all__ = ["EvalMessage", "Feed", "Run", "Shown", "Tally", "Timing", "Tensors"]

Tensors = tuple[dict[str, np.ndarray], dict[str, Any]]  # one training message: its arrays and its meta


@dataclass(frozen=True)
class EvalMessage:
    """One evaluation message: its number (the message's batch) and what it carries."""
    number: int
    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Shown:
    """What the progress bar shows after a result: the steps done in all, and the test accuracy or a note for it."""
    steps: int
    accuracy: Optional[float] = None
    note: str = ""


@dataclass(frozen=True)
class Timing:
    """How the run went, for a feed's summary fields: its steps in all, the step this process began at, seconds,
    examples trained (re-sent batches' included), and when the first and the last training result came (monotonic)."""
    steps: int
    first_step: int
    wall: float
    trained_samples: int
    first_result: Optional[float]
    last_result: float


@dataclass
class Tally:
    """Sums of result messages (loss, right examples, examples): a stretch of batches, or a batch of sequences' chunks."""
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, meta: dict[str, Any]) -> None:
        self.loss_sum += float(meta["loss_sum"])
        self.correct += int(meta["correct"])
        self.count += int(meta["count"])

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else 0.0


class Run(Protocol):
    """What a feed may ask of the trainer that runs it."""

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields` and the workers' metrics, as one line of metrics.jsonl (and TensorBoard); the line."""

    def metrics_until(self, evaluations: int) -> list[dict[str, Any]]:
        """The first `evaluations` lines of metrics.jsonl; the lines after them are rolled back."""


class Feed(Protocol):
    """A job's side of the main loop (see the module docstring). Steps are what `total` and a checkpoint's
    `Position.step` count: a dataset's batches, or batches of sequences; messages are what go out for them."""
    total: int  # the run's steps
    step_name: str  # a step in the log: "step", "batch"
    message_name: str  # a training message in the log: "batch", "chunk"
    input_shape: tuple[int, ...]  # the first stage's input (per step of a sequence)
    num_classes: int  # the readout's width
    loss: str  # the last stage's loss
    pixels: Optional[PixelScaling]  # how the first stage scales uint8 batches (None: they come as floats)
    waits_for_results: bool  # the next step is made only once every result of the last one is back

    def check_stages(self) -> None:
        """Build every stage once here before any worker starts; ConfigError names one that does not fit."""

    def check_output(self, shape: tuple[int, ...], head: int) -> None:
        """ConfigError if head `head`'s configured output is not what the feed scores."""

    def steps(self, start: int) -> Iterator[list[Tensors]]:
        """Each step's training messages from step `start` on, made when asked for (after the last one's results)."""

    def evaluations(self, steps: int, total: int) -> list[EvalMessage]:
        """The evaluation messages due after `steps` steps of `total`; they take no credit."""

    def final_evaluations(self) -> list[EvalMessage]:
        """The evaluation messages due once training is over, before the summary."""

    def trained(self, message: Message) -> Optional[Shown]:
        """Tally a training result; what the progress bar shows now, if anything new."""

    def evaluated(self, message: Message, run: Run) -> Optional[Shown]:
        """Tally an evaluation result (recording a complete evaluation); what the progress bar shows now."""

    def awaited(self) -> Optional[str]:
        """The evaluation still awaiting results, as a stall names it ("evaluation 2 got 1 of 3 batch results")."""

    def accurate_enough(self) -> bool:
        """Whether the last evaluation reached the job's stop_at_accuracy."""

    def position(self, step: int, sent: int) -> Position:
        """A checkpoint's position after `step` steps and `sent` training messages, with the feed's own state."""

    def sent_by(self, position: Position) -> int:
        """The training messages sent by a checkpoint's position."""

    def restore(self, position: Position, run: Run) -> None:
        """The feed's state back to a checkpoint's position (the start of the run: `Position()`)."""

    def summary(self, timing: Timing) -> dict[str, Any]:
        """The feed's own summary fields."""

    def plot(self, folder: RunFolder, summary: dict[str, Any]) -> None:
        """The finished run's picture in its folder."""
