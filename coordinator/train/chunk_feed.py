"""A sequence job's feed: its task's batches of sequences cut into chunks of T steps, fed through recurrent stages
on their own workers, the curriculum advanced on what comes back.

Each batch of sequences is generated from (seed, batch index), so a resumed run sees the same data. It goes out
as chunks of at most T = `truncation` steps, flagged `start` and `last`, within the same credit window as a
feed-forward job's batches; each chunk comes back from the readout as (bits on its scored steps, steps right,
steps scored). A copy task's next length depends on the errors so far (`Curriculum`), so its next batch is made
only once the last one's chunks are all back: the run is the same whatever the timing. The character task's
streams flow on without waiting, and its held-out tail is scored at the end as evaluation chunks (one stream
per batch row, each from a zero state).

Checkpoints fall between batches (the pipeline drained, every stage flushed). A copy task starts every batch
from a zero state, so its resume is exact; a character stream's kept state is in each stage's checkpoint and is
restored, only the synthesizer's one pending prediction over time is not (see `dni.workers.stage.recurrent.Recurrent`).

The helpers that make a batch's chunks and every stage's assignment are shared with the one-process runner
(`dni.coordinator.train.sequences`), which sees the same batches and chunks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

import numpy as np
import torch

from dni.coordinator.train.checkpoints import Position
from dni.coordinator.train.feeds import Tally, EvalMessage, Run, Shown, Tensors, Timing
from dni.coordinator.jobs.job import Job
from dni.coordinator.results.plots import plot_curves
from dni.coordinator.results.folder import RunFolder
from dni.coordinator.data.tasks import CharText, Curriculum, SequenceBatch, SequenceTask, bits_per_step
from dni.errors import ConfigError
from dni.protocol import Message
from dni.spec import PixelScaling
from dni.workers.build.builder import build_stages

__all__ = ["BatchTally", "ChunkFeed", "SequenceState", "batch_for", "check_readout", "check_sequence_stages",
           "chunks_of", "sequence_summary", "with_readout_width"]

log = logging.getLogger("dni.sequences")


@dataclass
class BatchTally:
    """One batch of sequences' results as its chunks come back."""
    index: int
    length: int
    chunks: int
    results: Tally = field(default_factory=Tally)
    received: int = 0

    def add(self, meta: dict[str, Any]) -> None:
        self.results.add(meta)
        self.received += 1

    @property
    def complete(self) -> bool:
        return self.received == self.chunks

    @property
    def bits_per_step(self) -> float:
        return bits_per_step(self.results.loss_sum, self.results.count)


def batch_for(job: Job, task: SequenceTask, index: int, level: int) -> SequenceBatch:
    """Batch `index` of the job's sequences, from (seed, index): `level` vectors long (copy tasks), or the text's
    next `text_window` characters of every stream."""
    generator = torch.Generator().manual_seed(job.seed * 1_000_003 + index)
    return task.batch(job.text_window if isinstance(task, CharText) else level, job.batch_size, generator)


def chunks_of(batch: SequenceBatch, truncation: int) -> Iterator[Tensors]:
    """The batch's chunks of at most `truncation` steps as wire tensors, each with its `start` and `last` flags."""
    length = batch.inputs.shape[1]
    for begin in range(0, length, truncation):
        end = min(begin + truncation, length)
        tensors = {"x": batch.inputs[:, begin:end], "labels": batch.targets[:, begin:end], "mask": batch.mask[:, begin:end]}
        yield ({name: np.ascontiguousarray(tensor.numpy()) for name, tensor in tensors.items()},
               {"start": batch.start and begin == 0, "last": batch.ends and end == length})


def sequence_summary(job: Job, task: SequenceTask, batches: int, curve: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """What every sequence job's summary says, on workers or in one process (each adds how its run went)."""
    return {"job": job.name, "task": task.name, "mode": job.mode.value, "truncation": job.truncation,
            "discount": job.discount, "batches": batches, "batch_size": job.batch_size, "wall_seconds": wall,
            "curve": curve}


def with_readout_width(job: Job, task: SequenceTask) -> Job:
    """The job with its `linear` readout as wide as the task's output, unless the job file says `features`."""
    readout = job.stages[-1]
    if readout.kind != "linear" or "features" in readout.params:
        return job
    widened = replace(readout, params={**readout.params, "features": task.output_size})
    return replace(job, stages=(*job.stages[:-1], widened))


def check_sequence_stages(job: Job, task: SequenceTask) -> None:
    """Build every stage once on the CPU, each for the previous one's per-step output; ConfigError names a stage that
    does not fit, or a readout whose output is not the task's."""
    built = build_stages(job.stages, input_shape=(task.input_size,), mode=job.mode, num_classes=task.output_size,
                         seed=job.seed, over_steps=True, optimizer=job.optimizer, discount=job.discount)
    check_readout(job, task, built[-1].output_shape)


def check_readout(job: Job, task: SequenceTask, shape: tuple[int, ...]) -> None:
    """ConfigError unless the readout's per-step output `shape` is the task's."""
    if tuple(shape) != (task.output_size,):
        raise ConfigError(f"the readout ({job.stages[-1].kind}) outputs {list(shape)} per step, but {task.name} "
                          f"needs {task.output_size}")


@dataclass
class SequenceState:
    """The run's own state beyond the stages', as a checkpoint keeps it."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    curriculum: Curriculum = field(default_factory=Curriculum)
    text_position: int = 0

    def as_json(self) -> dict[str, Any]:
        curriculum = self.curriculum
        return {"curve": self.curve, "text_position": self.text_position,
                "curriculum": {"level": curriculum.level, "solved": curriculum.solved, "recent": curriculum.recent}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SequenceState":
        if not data:
            return cls()
        return cls(list(data["curve"]), Curriculum(**data["curriculum"]), int(data["text_position"]))


class ChunkFeed:
    """What a sequence job feeds (see the module docstring); `Feed` is the protocol the trainer calls. A step is a
    batch of sequences, a training message one of its chunks."""
    step_name = "batch"
    message_name = "chunk"

    def __init__(self, job: Job, task: SequenceTask) -> None:
        self.job = job
        self.task = task
        self.total = job.iterations
        self.text = task if isinstance(task, CharText) else None
        self.waits_for_results = self.text is None  # the curriculum picks the next length from this batch's error
        self.input_shape: tuple[int, ...] = (task.input_size,)
        self.num_classes = task.output_size
        self.loss = task.loss
        self.pixels: Optional[PixelScaling] = None  # a task's steps are floats
        self.state = SequenceState()
        self.batches: dict[int, BatchTally] = {}  # batch of sequences -> its tally, until every chunk is back
        self.owner: dict[int, int] = {}  # chunk -> its batch of sequences
        self.chunks = 0  # chunks made, numbered as the trainer sends them
        self.final: Optional[BatchTally] = None  # the text's held-out evaluation, once it is sent

    def check_stages(self) -> None:
        check_sequence_stages(self.job, self.task)

    def check_output(self, shape: tuple[int, ...], head: int) -> None:
        check_readout(self.job, self.task, shape)

    def steps(self, start: int) -> Iterator[list[Tensors]]:
        for index in range(start, self.total):
            level = self.job.text_window if self.text else self.state.curriculum.level
            chunks = list(chunks_of(batch_for(self.job, self.task, index, level), self.job.truncation))
            self.batches[index] = BatchTally(index, level, len(chunks))
            self.owner.update(dict.fromkeys(range(self.chunks, self.chunks + len(chunks)), index))
            self.chunks += len(chunks)
            if self.text:
                self.state.text_position = self.text.position
            yield chunks

    def evaluations(self, steps: int, total: int) -> list[EvalMessage]:
        return []  # a sequence job is scored on its training batches, and the text once at the end

    def final_evaluations(self) -> list[EvalMessage]:
        """Bits per character over (at most `eval_characters` of) the text's held-out tail, as evaluation chunks."""
        if self.text is None:
            return []
        rows = self.text.evaluation_batch(self.job.eval_characters, self.job.batch_size)
        chunks = list(chunks_of(rows, self.job.truncation))
        self.final = BatchTally(-1, rows.inputs.shape[1], len(chunks))
        return [EvalMessage(number, tensors, {**flags, "eval": 0}) for number, (tensors, flags) in enumerate(chunks)]

    def trained(self, message: Message) -> Optional[Shown]:
        tally = self.batches[self.owner.pop(message.batch)]
        tally.add(message.meta)
        if not tally.complete:
            return None
        del self.batches[tally.index]
        error = tally.bits_per_step
        self.state.curve.append({"batch": tally.index, "length": tally.length, "bits_per_step": error})
        if not self.text:
            self.state.curriculum.record(error)
        return Shown(tally.index + 1, None, f"bits/char {error:5.3f}" if self.text else f"length {self.state.curriculum.level:3d}")

    def evaluated(self, message: Message, run: Run) -> Optional[Shown]:
        if self.final is None:
            log.warning("ignored an evaluation result before the text's evaluation began")
            return None
        self.final.add(message.meta)
        return None

    def awaited(self) -> Optional[str]:
        if self.final is None or self.final.complete:
            return None
        return f"the text's evaluation got {self.final.received} of {self.final.chunks} chunk results"

    def accurate_enough(self) -> bool:
        return False  # stop_at_accuracy is a dataset job's

    def position(self, step: int, sent: int) -> Position:
        return Position(step, 0, {"chunks": sent}, self.state.as_json())

    def sent_by(self, position: Position) -> int:
        return int(position.tally.get("chunks", 0))

    def restore(self, position: Position, run: Run) -> None:
        """The curve, curriculum and text position of the checkpoint; the stages' kept state comes with theirs."""
        self.state = SequenceState.from_json(position.sequence)
        self.chunks = self.sent_by(position)
        self.batches.clear()
        self.owner.clear()
        self.final = None
        if self.text:
            self.text.position = self.state.text_position
        if position.step:
            log.info("resuming at batch %d: %s", position.step, "every stage's kept state restored" if self.text else
                     "each batch starts its sequences afresh, so nothing is lost")

    def summary(self, timing: Timing) -> dict[str, Any]:
        summary = {
            **sequence_summary(self.job, self.task, timing.steps, self.state.curve, timing.wall),
            "batches_per_second": (timing.steps - timing.first_step) / timing.wall if timing.wall > 0 else 0.0,
            "resumed_from_batch": timing.first_step,
        }
        if self.final is not None:
            summary["test_bits_per_char"] = self.final.bits_per_step
        else:
            summary["max_length_solved"] = self.state.curriculum.solved
        return summary

    def plot(self, folder: RunFolder, summary: dict[str, Any]) -> None:
        plot_curves({f"{self.job.mode.value}, T = {self.job.truncation}": summary["curve"]}, folder.path / "curve.png",
                    f"{self.job.name}: {self.task.name}")
