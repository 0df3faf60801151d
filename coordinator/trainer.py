"""The job's main loop: configure every stage, feed training batches within a credit window,
slip evaluation batches into the same stream, and record what comes back."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

from dni.coordinator.assignments import stage_assignment
from dni.coordinator.checkpoints import Checkpoints, Position
from dni.coordinator.interrupts import INTERRUPTS
from dni.coordinator.data import Dataset, test_batches, train_batches
from dni.coordinator.job import Job
from dni.coordinator.pipeline import Pipeline
from dni.errors import PipelineError, StageFailed, WorkerLost
from dni.coordinator.progress import Progress
from dni.coordinator.recovery import RecoveryBudget, Replacements, recovering
from dni.coordinator.results import RunFolder, read_metrics
from dni.coordinator.segments import Segments
from dni.coordinator.shapes import check_last_shape
from dni.coordinator.tensorboard import TensorBoardLog
from dni.protocol import Kind, Message
from dni.protocol.linkdelay import describe
from dni.schedule import FeedSchedule
from dni.workers.timing import spans_from_arrays

if TYPE_CHECKING:
    from dni.coordinator.pools import WorkerPool

__all__ = ["REQUEST_TIMEOUT", "STALL_SECONDS", "Evaluation", "Tally", "Trainer", "checkpoint_stages", "state_of"]

log = logging.getLogger("dni.trainer")
REQUEST_TIMEOUT = 600.0  # a checkpoint or flush of a stage that keeps working
STALL_SECONDS = 10.0  # results outstanding, every stage idle this long: something was lost


@dataclass
class Tally:
    """Sums of per-batch results over a stretch of batches."""
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


@dataclass
class Evaluation:
    index: int
    step: int
    epoch: float
    batches: int
    train: Tally
    test: Tally = field(default_factory=Tally)
    received: int = 0


class Trainer:
    def __init__(self, job: Job, job_id: str, data: Dataset, pipeline: Pipeline, folder: RunFolder,
                 coordinator_address: str, show_progress: bool = True, *, pool: WorkerPool) -> None:
        self.job = job
        self.job_id = job_id
        self.data = data
        self.pipeline = pipeline
        self.folder = folder
        self.coordinator_address = coordinator_address
        self.total = job.total_steps(len(data.train_y))
        self.per_epoch = job.steps_per_epoch(len(data.train_y))
        self.eval_every = job.eval_every or self.per_epoch
        self.eval_sets = test_batches(data, job.eval_batch_size, raw=True)
        self.schedule = FeedSchedule(credit=job.window + len(job.stages))
        self.progress = Progress(self.total, f"{job.name}/{job.mode.value}", show_progress)
        self.sent = 0
        self.done = 0
        self.train_tally = Tally()
        self.evaluations: dict[int, Evaluation] = {}
        self.checkpoints = Checkpoints(folder.path / "checkpoints")
        self.records: list[dict[str, Any]] = []
        self.workers: list[dict[str, Any]] = []
        self.base_job_id = job_id
        self.budget = RecoveryBudget(job.max_recoveries, job.recovery_window)
        self.replacements = Replacements(pool, pipeline)
        self.segments = Segments(folder.path)
        self.recoveries = 0  # this segment's: every try of a replacement
        self.resent = 0  # this segment's: batches sent again after a recovery
        self.trained_samples = 0  # examples in the training results received, re-sent batches' included
        self.first_step = 0
        self.started = 0.0
        self.cpu_started = 0.0
        self.first_result: Optional[float] = None
        self.last_result = 0.0
        self.stopped_early: Optional[str] = None  # why training ended before its last step: "time_limit", "accuracy"
        self.tensorboard = TensorBoardLog(job, folder.path)

    def configure(self, restore: bool) -> None:
        """Send every stage its configuration, in order: each stage's output shape is the next one's input."""
        shape = self.data.input_shape
        endpoints = self.pipeline.endpoints
        self.workers = []
        for index in range(len(self.job.stages)):
            config = stage_assignment(self.job, index, endpoints, shape, self.coordinator_address,
                                      str(self.checkpoints.stage(index)) if restore else None, self.job_id,
                                      num_classes=self.data.num_classes, loss=self.job.loss,
                                      pixels=self.data.pixels)
            reply = self.pipeline.request(index, "configure", {"config": config.to_wire()}, timeout=120)
            self.workers.append({"stage": index, "address": endpoints[index].control, **{k: v for k, v in reply.meta.items() if k != "ok"}})
            shape = tuple(reply.meta["output_shape"])
        check_last_shape(self.job, shape, self.data.num_classes)

    def run(self) -> dict[str, Any]:
        position = self.checkpoints.position()
        self.first_step = start = position.step
        self.progress.start = start
        self.progress.earlier_seconds = self.segments.totals()["total_wall_seconds"]
        self.records = read_metrics(self.folder.path)[:position.evaluations] if position.evaluations else []
        if position.step:  # a resumed run: lines written after its checkpoint are rolled back over
            self.folder.rewrite_metrics(self.records)
        with INTERRUPTS.deferring(), self.segments.recording(start):  # a signal ends training at the loop's next turn
            self.started = self.progress.started = time.monotonic()
            self.cpu_started = time.process_time()
            summary = self._train_recovering(position)
        self.progress.close()
        self.tensorboard.close()
        return summary

    def _train_recovering(self, position: Position) -> dict[str, Any]:
        """Train to the end and finish; a lost worker is replaced and training goes on from the last checkpoint."""
        return recovering(self.budget, self._recover, self.pipeline.pause, lambda: self._rewind(position), self._train_to_end)

    def _train_to_end(self, start: int) -> dict[str, Any]:
        try:
            self._train(start)
            self._checkpoint()
            return self._finish()
        except KeyboardInterrupt:  # with a checkpoint, written first
            self._checkpoint_on_interrupt()
            raise

    def _train(self, start: int) -> None:
        batches = train_batches(self.data, self.job.batch_size, self.job.seed, self.total, start, raw=True)
        for step, (_, x, labels) in enumerate(batches, start=start):
            reason = self._reason_to_stop() if self.sent > start else None
            if reason:
                self._stop_early(reason)
                break
            while not self.schedule.may_feed(self.sent, self.done, self.pipeline.feed_over_bound()):
                self._absorb(self._receive())
            self.pipeline.send_batch(Kind.FORWARD, step, x, labels)
            self.sent += 1
            if self.sent % self.eval_every == 0 or self.sent == self.total:
                self._start_evaluation()
            if self.job.checkpoint_every and self.sent % self.job.checkpoint_every == 0 and self.sent < self.total:
                self._checkpoint()
            self._absorb_ready()
        self._drain()

    def _reason_to_stop(self) -> Optional[str]:
        """Why training should end before its last step: the time limit is up, or an evaluation was accurate enough."""
        if self.job.time_limit and time.monotonic() - self.started >= self.job.time_limit:
            return "time_limit"
        if self.job.stop_at_accuracy and self.records and self.records[-1]["test_accuracy"] >= self.job.stop_at_accuracy:
            return "accuracy"
        return None

    def _stop_early(self, reason: str) -> None:
        """Training ends here: what was sent is the whole run, and it ends with an evaluation."""
        why = f"time limit of {self.job.time_limit}s reached" if reason == "time_limit" else \
            f"test accuracy reached stop_at_accuracy = {self.job.stop_at_accuracy:g}"
        log.info("%s: stopping after %d of %d steps", why, self.sent, self.total)
        self.stopped_early = reason
        self.total = self.sent
        if self.sent % self.eval_every:
            self._start_evaluation()

    def _drain(self) -> None:
        while self.done < self.sent or self.evaluations:
            self._absorb(self._receive())

    def _checkpoint(self) -> None:
        """A consistent cut: no batch in flight anywhere, every stage saved at the same step."""
        self._drain()
        self.pipeline.request_all("flush", timeout=REQUEST_TIMEOUT, stall_timeout=STALL_SECONDS)
        checkpoint_stages(self.pipeline, self.checkpoints, Position(self.sent, len(self.records), vars(self.train_tally)))
        self._save_segment()

    def _save_segment(self, status: str = "running") -> None:
        segment = self.segments.current
        segment.to_step, segment.recoveries, segment.resent_batches = self.sent, self.recoveries, self.resent
        self.segments.save(status)

    def _checkpoint_on_interrupt(self) -> None:
        """A last checkpoint if the pipeline can still give one; else the last periodic one stays what --resume uses."""
        resume_from = self.checkpoints.position().step
        gone = self.pipeline.gone(grace=0.0)
        if gone is not None:
            log.error("interrupted; no checkpoint written: stage %d has lost its connection; --resume continues from step %d",
                      gone, resume_from)
            return
        log.warning("interrupted: writing a checkpoint at step %d first (interrupt again to skip it)", self.sent)
        try:
            self._checkpoint()
        except PipelineError as error:
            log.error("no checkpoint written (%s); --resume continues from step %d", error, resume_from)

    def _recover(self, loss: WorkerLost, retry: int) -> int:
        """A new worker for the lost stage, every stage rolled back to the last checkpoint, and what was lost re-sent."""
        position = self.checkpoints.position()
        self.budget.resuming_from(position.step, loss)
        lost = self.sent - position.step
        log.warning("%s; replacing its worker%s and resuming every stage from step %d (%d batches re-sent)", loss,
                    f" (try {retry + 1} of this recovery)" if retry else "", position.step, lost)
        self.recoveries += 1
        self.resent += lost
        self.sent = self.done = position.step  # counted once, whichever try succeeds
        self.evaluations.clear()
        self.replacements.bring_back(loss)
        self.job_id = self.pipeline.job_id = f"{self.base_job_id}-r{self.recoveries}"  # stale messages no longer match
        self.pipeline.forget_silence()
        self.records = self.records[:position.evaluations]
        self.folder.rewrite_metrics(self.records)
        self._rewind(position)
        self._save_segment()
        return position.step

    def _rewind(self, position: Position) -> int:
        """Counters and every stage back to a checkpoint (or to the start of the run); the step to go on from."""
        self.sent = self.done = position.step
        self.train_tally = Tally(**position.tally)
        self.configure(restore=position.step > 0)
        return position.step

    def _receive(self) -> Message:
        """The next result; one that cannot come any more (every stage idle) fails the run, naming where it was lost."""
        return self.pipeline.receive_until_stalled(STALL_SECONDS, self._lost)

    def _lost(self) -> StageFailed:
        steps = [int(status.get("steps", -1)) for status in self.pipeline.status]
        idle = f"every stage has been idle for {self.pipeline.idle_for():.0f}s"
        if self.done < self.sent:
            stage = next((index for index, done in enumerate(steps) if done < self.sent), len(steps) - 1)
            return StageFailed(stage, f"batch {self.done} never came back and {idle}: stage {stage} trained on "
                                      f"{steps[stage]} of the {self.sent} batches sent, so it was lost at stage {stage}")
        evaluation = next(iter(self.evaluations.values()))
        return StageFailed(len(steps) - 1, f"evaluation {evaluation.index} got {evaluation.received} of {evaluation.batches} "
                                           f"batch results and {idle}: the rest were lost")

    def _absorb_ready(self) -> None:
        while (message := self.pipeline.receive(0)) is not None:
            self._absorb(message)

    def _absorb(self, message: Message) -> None:
        if message.kind is Kind.TRAIN_RESULT:
            self.done += 1
            self.trained_samples += int(message.meta["count"])
            self.last_result = time.monotonic()
            self.first_result = self.first_result or self.last_result
            self.train_tally.add(message.meta)
            latest = self.records[-1]["test_accuracy"] if self.records else None
            self.progress.update(self.done, self.done * self.job.batch_size, latest)
        elif message.kind is Kind.EVAL_RESULT:
            evaluation = self.evaluations.get(message.meta.get("eval", -1))
            if evaluation is None:
                log.warning("ignored a result for evaluation %r, which is not running", message.meta.get("eval"))
                return
            evaluation.test.add(message.meta)
            evaluation.received += 1
            if evaluation.received == evaluation.batches:
                self._record(self.evaluations.pop(evaluation.index))
        else:
            log.warning("unexpected %s from stage %d", message.kind.name, message.sender)

    def _start_evaluation(self) -> None:
        index = len(self.records) + len(self.evaluations)
        evaluation = Evaluation(index, self.sent, self.sent / self.per_epoch, len(self.eval_sets), self.train_tally)
        self.train_tally = Tally()
        self.evaluations[index] = evaluation
        for offset, (x, labels) in enumerate(self.eval_sets):
            self.pipeline.send_batch(Kind.EVAL, index * len(self.eval_sets) + offset, x, labels, {"eval": index})

    def _record(self, evaluation: Evaluation) -> None:
        """One metrics line; the training tally may still lack a few in-flight batches, which go to the next line."""
        worker_metrics = [reply.meta["metrics"] for reply in self.pipeline.request_all("metrics")]
        elapsed = time.monotonic() - self.started
        record = {
            "eval": evaluation.index, "step": evaluation.step, "epoch": round(evaluation.epoch, 4),
            "train_accuracy": evaluation.train.accuracy, "train_loss": evaluation.train.loss,
            "test_accuracy": evaluation.test.accuracy, "test_loss": evaluation.test.loss,
            "elapsed": elapsed, "samples_per_second": self.trained_samples / elapsed,
            "workers": worker_metrics, "worker_errors": self.pipeline.refused_by_stage,
        }
        self.records.append(record)
        self.folder.append_metrics(record)
        self.tensorboard.write(record)
        self.progress.update(self.done, self.done * self.job.batch_size, evaluation.test.accuracy)

    def _finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        cpu = time.process_time() - self.cpu_started
        trained = self.total - self.first_step
        self._save_segment("complete")
        replies = self.pipeline.request_all("metrics", {"spans": self.job.record_spans, "profile": self.job.profile})
        final = [reply.meta["metrics"] for reply in replies]
        self.folder.save_state([state_of(reply) for reply in self.pipeline.request_all("state")])
        if self.job.record_spans:
            self.folder.write_json("spans.json", [spans_from_arrays(reply.tensors) for reply in replies])
        last = self.records[-1]
        return {
            "job": self.job.name, "job_id": self.job_id, "mode": self.job.mode.value, "dataset": self.job.dataset,
            "steps": self.total, "epochs": round(self.total / self.per_epoch, 3), "batch_size": self.job.batch_size,
            "stopped_at_time_limit": self.stopped_early == "time_limit", "stopped_at_accuracy": self.stopped_early == "accuracy",
            "link_delay_ms": self.job.link_delay_ms, "link": describe(self.job.link_delay_ms),
            "feed_link": self.pipeline.link.stats(),
            "test_accuracy": last["test_accuracy"], "best_test_accuracy": max(r["test_accuracy"] for r in self.records),
            "train_accuracy": last["train_accuracy"], "wall_seconds": wall,
            "samples_per_second": self.trained_samples / wall,
            "steady_samples_per_second": (trained - 1) * self.job.batch_size / (self.last_result - self.first_result)
            if self.first_result and self.last_result > self.first_result else 0.0,
            "resumed_from_step": self.first_step, **self.segments.totals(),
            "seconds_to_first_result": (self.first_result or time.monotonic()) - self.started,
            "first_result_at": time.time() - (time.monotonic() - (self.first_result or time.monotonic())),
            "coordinator_cpu_fraction": cpu / wall,
            "workers": self.workers, "worker_metrics": final, "worker_errors": [sum(m["errors"].values()) for m in final],
        }


def checkpoint_stages(pipeline: Pipeline, checkpoints: Checkpoints, position: Position) -> None:
    """Every stage saves, then `position` commits the checkpoint; if any of it fails, what was not committed is thrown
    away (freeing the disk it took) and the last committed checkpoint stays the one --resume uses."""
    checkpoints.begin()
    try:
        for stage in range(pipeline.stages):
            pipeline.request(stage, "checkpoint", {"path": str(checkpoints.staged(stage))}, timeout=REQUEST_TIMEOUT)
        checkpoints.record(position)
    except BaseException:
        checkpoints.discard_uncommitted()
        raise


def state_of(reply: Message) -> dict[str, torch.Tensor]:
    """A stage's weights from its `state` reply."""
    return {name: torch.from_numpy(array.copy()) for name, array in reply.tensors.items()}
