"""A sequence job's main loop: its task's batches of sequences cut into chunks of T steps, fed through recurrent
stages on their own workers, the curriculum advanced on what comes back.

Each batch of sequences is generated from (seed, batch index), so a resumed run sees the same data. It goes out
as chunks of at most T = `truncation` steps, flagged `start` and `last`, within the same credit window as a
feed-forward job's batches; each chunk comes back from the readout as (bits on its scored steps, steps right,
steps scored). A copy task's next length depends on the errors so far (`Curriculum`), so its next batch is made
only once the last one's chunks are all back: the run is the same whatever the timing. The character task's
streams flow on without waiting, and its held-out tail is scored at the end as evaluation chunks (one stream
per batch row, each from a zero state).

Checkpoints fall between batches (the pipeline drained, every stage flushed). A copy task starts every batch
from a zero state, so its resume is exact; a character stream's kept state is in each stage's checkpoint and is
restored, only the synthesizer's one pending prediction over time is not (see `dni.workers.sequence_stage`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
import torch

from dni.coordinator.assignments import stage_assignment
from dni.coordinator.checkpoints import Checkpoints, Position
from dni.coordinator.interrupts import INTERRUPTS
from dni.coordinator.job import Job
from dni.coordinator.pipeline import Pipeline
from dni.errors import StageFailed, WorkerLost
from dni.coordinator.progress import Progress
from dni.coordinator.recovery import RecoveryBudget, Replacements, recovering
from dni.coordinator.results import RunFolder
from dni.coordinator.segments import Segments
from dni.coordinator.tasks import CharText, Curriculum, SequenceBatch, SequenceTask, bits_per_step
from dni.coordinator.trainer import REQUEST_TIMEOUT, STALL_SECONDS, checkpoint_stages, state_of
from dni.errors import ConfigError
from dni.protocol import Endpoints, Kind, Message
from dni.schedule import FeedSchedule
from dni.spec import StageAssignment
from dni.workers.build import build_stages

if TYPE_CHECKING:
    from dni.coordinator.pools import WorkerPool

__all__ = ["STAND_IN", "BatchTally", "SequenceState", "SequenceTrainer", "batch_for", "check_sequence_stages", "chunks_of",
           "sequence_assignments", "sequence_summary", "with_readout_width"]

log = logging.getLogger("dni.sequences")
STAND_IN = Endpoints("ipc://unused", "ipc://unused", "ipc://unused")  # neighbours of a stage built only to be checked


@dataclass
class BatchTally:
    """One batch of sequences' results as its chunks come back."""
    index: int
    length: int
    chunks: int
    bits: float = 0.0
    scored: int = 0
    received: int = 0

    def add(self, meta: dict[str, Any]) -> None:
        self.bits += float(meta["loss_sum"])
        self.scored += int(meta["count"])
        self.received += 1

    @property
    def complete(self) -> bool:
        return self.received == self.chunks

    @property
    def bits_per_step(self) -> float:
        return bits_per_step(self.bits, self.scored)


def batch_for(job: Job, task: SequenceTask, index: int, level: int) -> SequenceBatch:
    """Batch `index` of the job's sequences, from (seed, index): `level` vectors long (copy tasks), or the text's
    next `text_window` characters of every stream."""
    generator = torch.Generator().manual_seed(job.seed * 1_000_003 + index)
    return task.batch(job.text_window if isinstance(task, CharText) else level, job.batch_size, generator)


def chunks_of(batch: SequenceBatch, truncation: int) -> Iterator[tuple[dict[str, np.ndarray], dict[str, bool]]]:
    """The batch's chunks of at most `truncation` steps as wire tensors, each with its `start` and `last` flags."""
    length = batch.inputs.shape[1]
    for begin in range(0, length, truncation):
        end = min(begin + truncation, length)
        tensors = {"x": batch.inputs[:, begin:end], "labels": batch.targets[:, begin:end], "mask": batch.mask[:, begin:end]}
        yield ({name: np.ascontiguousarray(tensor.numpy()) for name, tensor in tensors.items()},
               {"start": batch.start and begin == 0, "last": batch.ends and end == length})


def sequence_assignments(job: Job, task: SequenceTask, job_id: str, coordinator: str, endpoints: list[Any],
                         shapes: list[tuple[int, ...]], restore: Optional[Checkpoints]) -> list[StageAssignment]:
    """What each stage of a sequence job is told; `shapes[i]` is stage i's per-step input shape."""
    return [stage_assignment(job, index, endpoints, shapes[index], coordinator,
                             str(restore.stage(index)) if restore is not None else None, job_id,
                             num_classes=task.output_size, loss=task.loss)
            for index in range(min(len(shapes), len(job.stages)))]


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
    """Build every stage once on the CPU, each for the previous one's output; ConfigError names a stage that does
    not fit, or a readout whose output is not the task's."""
    built = build_stages(job.stages, input_shape=(task.input_size,), mode=job.mode, num_classes=task.output_size,
                         seed=job.seed, over_steps=True, optimizer=job.optimizer, discount=job.discount)
    if built[-1].output_shape != (task.output_size,):
        raise ConfigError(f"the readout ({job.stages[-1].kind}) outputs {list(built[-1].output_shape)} per step, but "
                          f"{task.name} needs {task.output_size}")


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


class SequenceTrainer:
    """Trains a sequence job (see the module docstring) on a pipeline whose stages are recurrent workers."""

    def __init__(self, job: Job, job_id: str, task: SequenceTask, pipeline: Pipeline, folder: RunFolder,
                 coordinator_address: str, show_progress: bool = True, *, pool: WorkerPool) -> None:
        self.job, self.job_id, self.task, self.pipeline, self.folder = job, job_id, task, pipeline, folder
        self.coordinator_address = coordinator_address
        self.total = job.iterations
        self.text = task if isinstance(task, CharText) else None
        self.schedule = FeedSchedule(credit=job.window + len(job.stages))
        self.progress = Progress(self.total, f"{job.name}/{job.mode.value}", show_progress)
        self.checkpoints = Checkpoints(folder.path / "checkpoints")
        self.state = SequenceState()
        self.batches: dict[int, BatchTally] = {}  # batch of sequences -> its tally, until every chunk is back
        self.owner: dict[int, int] = {}  # chunk -> its batch of sequences
        self.sent = self.done = 0  # chunks
        self.base_job_id = job_id
        self.budget = RecoveryBudget(job.max_recoveries, job.recovery_window)
        self.replacements = Replacements(pool, pipeline)
        self.segments = Segments(folder.path)
        self.recoveries = 0  # this segment's: every try of a replacement
        self.resent = 0  # this segment's: chunks sent again after a recovery
        self.first_batch = 0
        self.workers: list[dict[str, Any]] = []
        self.started = 0.0
        self.stopped_at_time_limit = False

    def configure(self, restore: bool) -> None:
        """Every stage its assignment, in order: each one's per-step output is the next one's input."""
        endpoints = self.pipeline.endpoints
        shapes: list[tuple[int, ...]] = [(self.task.input_size,)]
        self.workers = []
        for index in range(len(self.job.stages)):
            config = sequence_assignments(self.job, self.task, self.job_id, self.coordinator_address, endpoints, shapes,
                                          self.checkpoints if restore else None)[index]
            reply = self.pipeline.request(index, "configure", {"config": config.to_wire()}, timeout=120)
            self.workers.append({"stage": index, "address": endpoints[index].control,
                                 **{k: v for k, v in reply.meta.items() if k != "ok"}})
            shapes.append(tuple(reply.meta["output_shape"]))

    def run(self) -> dict[str, Any]:
        position = self.checkpoints.position()
        self.first_batch = self.progress.start = position.step
        self.progress.earlier_seconds = self.segments.totals()["total_wall_seconds"]
        with INTERRUPTS.deferring(), self.segments.recording(position.step):  # a signal ends training at the loop's next turn
            self.started = self.progress.started = time.monotonic()
            summary = self._train_recovering(position)
        self.progress.close()
        return summary

    def _train_recovering(self, position: Position) -> dict[str, Any]:
        """Train to the end and finish; a lost worker is replaced and training goes on from the last checkpoint."""
        return recovering(self.budget, self._recover, self.pipeline.pause, lambda: self._rewind(position), self._train_to_end)

    def _train_to_end(self, start: int) -> dict[str, Any]:
        try:
            self._train(start)
            self._checkpoint(self.total)
            return self._finish()
        except KeyboardInterrupt:  # a cut mid-batch would split its sequences: the last checkpoint stays
            log.warning("interrupted; --resume continues from batch %d, the last checkpoint", self.checkpoints.position().step)
            raise

    def _train(self, start: int) -> None:
        for index in range(start, self.total):
            if self.job.time_limit and time.monotonic() - self.started >= self.job.time_limit:
                log.info("time limit of %ds reached: stopping after %d of %d batches", self.job.time_limit, index, self.total)
                self.total, self.stopped_at_time_limit = index, True
                break
            level = self.job.text_window if self.text else self.state.curriculum.level
            self._feed(index, level, batch_for(self.job, self.task, index, level))
            if not self.text:  # the curriculum picks the next length from this batch's error
                self._drain()
            if self.job.checkpoint_every and (index + 1) % self.job.checkpoint_every == 0 and index + 1 < self.total:
                self._checkpoint(index + 1)
        self._drain()

    def _feed(self, index: int, length: int, batch: SequenceBatch) -> None:
        chunks = list(chunks_of(batch, self.job.truncation))
        self.batches[index] = BatchTally(index, length, len(chunks))
        for tensors, flags in chunks:
            while not self.schedule.may_feed(self.sent, self.done, self.pipeline.feed_over_bound()):
                self._absorb(self._receive())
            self.owner[self.sent] = index
            self.pipeline.send_tensors(Kind.FORWARD, self.sent, tensors, flags)
            self.sent += 1
        if self.text:
            self.state.text_position = self.text.position

    def _drain(self) -> None:
        while self.done < self.sent:
            self._absorb(self._receive())

    def _receive(self) -> Message:
        """The next result; one that cannot come any more (every stage idle) fails the run, naming where it was lost."""
        return self.pipeline.receive_until_stalled(STALL_SECONDS, self._lost)

    def _lost(self) -> StageFailed:
        steps = [int(status.get("steps", -1)) for status in self.pipeline.status]
        stage = next((index for index, done in enumerate(steps) if done < self.sent), len(steps) - 1)
        return StageFailed(stage, f"chunk {self.done} never came back and every stage has been idle for "
                                  f"{self.pipeline.idle_for():.0f}s: stage {stage} ran {steps[stage]} of the {self.sent} "
                                  f"chunks sent, so it was lost at stage {stage}")

    def _absorb(self, message: Message) -> None:
        if message.kind is not Kind.TRAIN_RESULT:
            log.warning("unexpected %s from stage %d", message.kind.name, message.sender)
            return
        self.done += 1
        tally = self.batches[self.owner.pop(message.batch)]
        tally.add(message.meta)
        if tally.complete:
            del self.batches[tally.index]
            self._record(tally)

    def _record(self, tally: BatchTally) -> None:
        error = tally.bits_per_step
        self.state.curve.append({"batch": tally.index, "length": tally.length, "bits_per_step": error})
        if not self.text:
            self.state.curriculum.record(error)
        shown = f"bits/char {error:5.3f}" if self.text else f"length {self.state.curriculum.level:3d}"
        self.progress.update(tally.index + 1, (tally.index + 1) * self.job.batch_size, None, shown)

    def _checkpoint(self, batches: int) -> None:
        """A cut between batches: no chunk in flight, every stage saved after the same chunk."""
        self._drain()
        self.pipeline.request_all("flush", timeout=REQUEST_TIMEOUT, stall_timeout=STALL_SECONDS)
        checkpoint_stages(self.pipeline, self.checkpoints, Position(batches, 0, {"chunks": self.sent}, self.state.as_json()))
        self._save_segment(batches)

    def _save_segment(self, batches: int, status: str = "running") -> None:
        segment = self.segments.current
        segment.to_step, segment.recoveries, segment.resent_batches = batches, self.recoveries, self.resent
        self.segments.save(status)

    def _rewind(self, position: Position) -> int:
        """The run's state and every stage back to a checkpoint (or the start); the batch to go on from."""
        self.state = SequenceState.from_json(position.sequence)
        self.sent = self.done = int(position.tally.get("chunks", 0))
        self.batches.clear()
        self.owner.clear()
        if self.text:
            self.text.position = self.state.text_position
        if position.step:
            log.info("resuming at batch %d: %s", position.step, "every stage's kept state restored" if self.text else
                     "each batch starts its sequences afresh, so nothing is lost")
        self.configure(restore=position.step > 0)
        return position.step

    def _recover(self, loss: WorkerLost, retry: int) -> int:
        """A new worker for the lost stage, every stage back to the last checkpoint, training on from there."""
        position = self.checkpoints.position()
        self.budget.resuming_from(position.step, loss)
        checkpointed = int(position.tally.get("chunks", 0))
        log.warning("%s; replacing its worker%s and resuming every stage from batch %d (%d chunks re-sent)", loss,
                    f" (try {retry + 1} of this recovery)" if retry else "", position.step, self.sent - checkpointed)
        self.recoveries += 1
        self.resent += self.sent - checkpointed
        self.sent = self.done = checkpointed  # counted once, whichever try succeeds
        self.replacements.bring_back(loss)
        self.job_id = self.pipeline.job_id = f"{self.base_job_id}-r{self.recoveries}"  # stale messages no longer match
        self.pipeline.forget_silence()
        start = self._rewind(position)
        self._save_segment(start)
        return start

    def _evaluate_text(self, text: CharText) -> float:
        """Bits per character over (at most `eval_characters` of) the held-out tail, as evaluation chunks."""
        rows = text.evaluation_batch(self.job.eval_characters, self.job.batch_size)
        chunks = list(chunks_of(rows, self.job.truncation))
        for number, (tensors, flags) in enumerate(chunks):
            self.pipeline.send_tensors(Kind.EVAL, number, tensors, {**flags, "eval": 0})
        bits, scored = 0.0, 0
        for _ in chunks:
            message = self._receive()
            if message.kind is Kind.EVAL_RESULT:
                bits, scored = bits + float(message.meta["loss_sum"]), scored + int(message.meta["count"])
        return bits_per_step(bits, scored)

    def _finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        self._save_segment(self.total, "complete")
        self.folder.save_state([state_of(reply) for reply in self.pipeline.request_all("state")])
        summary = {
            **sequence_summary(self.job, self.task, self.total, self.state.curve, wall), "job_id": self.job_id,
            "stopped_at_time_limit": self.stopped_at_time_limit,
            "batches_per_second": (self.total - self.first_batch) / wall if wall > 0 else 0.0,
            "resumed_from_batch": self.first_batch, **self.segments.totals(), "workers": self.workers,
            "worker_metrics": [reply.meta["metrics"] for reply in self.pipeline.request_all("metrics")],
        }
        if self.text:
            summary["test_bits_per_char"] = self._evaluate_text(self.text)
        else:
            summary["max_length_solved"] = self.state.curriculum.solved
        return summary
