"""The job's main loop, whatever the job feeds: configure every stage, feed training steps within a credit window,
slip evaluations into the same stream, and take in what comes back; checkpoint, recover, and summarise.

What differs between a dataset job and a sequence job is its `Feed` (`dni.coordinator.train.feeds`): the messages of
each step (a dataset's batch; a batch of sequences as chunks of T steps), how results are tallied, whether the
next step waits for every result, and its own part of a checkpoint and of the summary. Steps are what `total`
and a checkpoint count; messages are what go out for them and what the credit window bounds.

A checkpoint is a consistent cut between steps: no message in flight anywhere, every stage saved after the same
one. A lost worker is replaced and every stage goes back to the last checkpoint (`recovering`). An interrupt
writes a checkpoint at the step it came in, unless it came in the middle of a step (a batch of sequences half
sent: a cut there would split its sequences), when the last checkpoint stays the one --resume uses.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

from dni.coordinator.train.checkpoints import Checkpoints, Position
from dni.coordinator.jobs.assignments import OutputShape, stage_assignment
from dni.coordinator.train.feeds import EvalMessage, Feed, Shown, Tensors, Timing
from dni.coordinator.train.interrupts import INTERRUPTS
from dni.coordinator.jobs.job import Job
from dni.coordinator.pools.pipeline import Pipeline
from dni.coordinator.train.progress import Progress
from dni.coordinator.train.recovery import RecoveryBudget, Replacements, recovering
from dni.coordinator.results.folder import RunFolder, read_metrics
from dni.coordinator.train.routes import Routes
from dni.coordinator.train.segments import Segments
from dni.coordinator.results.tensorboard import TensorBoardLog
from dni.errors import PipelineError, StageFailed, WorkerLost
from dni.graph import stage_label
from dni.protocol import Kind, Message
from dni.protocol.linkdelay import describe
from dni.schedule import FeedSchedule
from dni.spec import StageAssignment
from dni.workers.stage.timing import spans_from_arrays

if TYPE_CHECKING:
    from dni.coordinator.pools.pool import WorkerPool

__all__ = ["REQUEST_TIMEOUT", "STALL_SECONDS", "Trainer", "checkpoint_stages", "plural", "state_of"]

log = logging.getLogger("dni.trainer")
REQUEST_TIMEOUT = 600.0  # a checkpoint or flush of a stage that keeps working
STALL_SECONDS = 10.0  # results outstanding, every stage idle this long: something was lost


class Trainer:
    """Runs a job on its pipeline (see the module docstring); `feed` is what the job feeds. It is the `Run` its
    feed asks for metrics lines."""

    def __init__(self, job: Job, job_id: str, feed: Feed, pipeline: Pipeline, folder: RunFolder,
                 coordinator_address: str, show_progress: bool = True, *, pool: WorkerPool) -> None:
        self.job = job
        self.job_id = job_id
        self.feed = feed
        self.pipeline = pipeline
        self.folder = folder
        self.coordinator_address = coordinator_address
        self.total = feed.total
        self.schedule = FeedSchedule(credit=job.window + len(job.stages))
        self.topology = job.topology
        pipeline.names = () if self.topology.chain else self.topology.names
        self.routes = Routes([])  # set when the stages are configured
        self.heads_in: dict[int, int] = {}  # training batches some but not all heads have reported
        self.progress = Progress(self.total, f"{job.name}/{job.mode.value}", show_progress)
        self.step = 0  # steps fed whole
        self.sent = 0  # training messages
        self.done = 0  # training results
        self.fed_of_step = 0  # messages of the step being fed that went out: a cut now would split the step
        self.checkpoints = Checkpoints(folder.path / "checkpoints")
        self.workers: list[dict[str, Any]] = []
        self.base_job_id = job_id
        self.budget = RecoveryBudget(job.max_recoveries, job.recovery_window)
        self.replacements = Replacements(pool, pipeline)
        self.segments = Segments(folder.path)
        self.recoveries = 0  # this segment's: every try of a replacement
        self.resent = 0  # this segment's: messages sent again after a recovery
        self.trained_samples = 0  # examples in the training results received, re-sent ones' included
        self.first_step = 0
        self.started = 0.0
        self.cpu_started = 0.0
        self.first_result: Optional[float] = None
        self.last_result = 0.0
        self.stopped_early: Optional[str] = None  # why training ended before its last step: "time_limit", "accuracy"
        self.tensorboard = TensorBoardLog(job, folder.path)

    def configure(self, restore: bool) -> None:
        """Send every stage its assignment, in the graph's order: each stage's output shape is its consumers' input;
        then route the data and the labels to the stages that said they take them."""
        endpoints = self.pipeline.endpoints
        shapes: dict[int, OutputShape] = {-1: tuple(self.feed.input_shape)}
        workers: dict[int, dict[str, Any]] = {}
        for index in self.topology.order():
            config = self._assignment(index, shapes, restore)
            reply = self.pipeline.request(index, "configure", {"config": config.to_wire()}, timeout=120)
            workers[index] = {"stage": index, "address": endpoints[index].control,
                              **{k: v for k, v in reply.meta.items() if k != "ok"}}
            shapes[index] = self._output_shape(index, reply.meta)
        self.workers = [workers[index] for index in range(len(self.job.stages))]
        for head in self.topology.heads:
            self.feed.check_output(tuple(workers[head]["output_shape"]), head)
        self.routes = Routes.of(self.job, [bool(worker.get("takes_labels")) for worker in self.workers])

    def _output_shape(self, index: int, reply: dict[str, Any]) -> OutputShape:
        """What a configured stage says it outputs: one shape, or one per output edge, which must name them all."""
        per_edge = reply.get("edge_shapes")
        if not per_edge:
            return tuple(reply["output_shape"])
        consumers = sorted(self.topology.names[consumer] for consumer in self.topology.consumers(index))
        named = sorted(per_edge) if isinstance(per_edge, dict) else per_edge
        if named != consumers:
            raise PipelineError(f"{self.pipeline.where(index)} reports shapes for edges {named!r:.100} where it has "
                                f"{consumers}")
        return per_edge

    def _assignment(self, index: int, shapes: dict[int, OutputShape], restore: bool) -> StageAssignment:
        return stage_assignment(self.job, index, self.pipeline.endpoints, shapes, self.coordinator_address,
                                str(self.checkpoints.stage(index)) if restore else None, self.job_id,
                                num_classes=self.feed.num_classes, loss=self.feed.loss, pixels=self.feed.pixels)

    def run(self) -> dict[str, Any]:
        position = self.checkpoints.position()
        self.first_step = self.progress.start = position.step
        self.progress.earlier_seconds = self.segments.totals()["total_wall_seconds"]
        with INTERRUPTS.deferring(), self.segments.recording(position.step):  # a signal ends training at the loop's next turn
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
            self._send_evaluations(self.feed.final_evaluations())
            self._drain()
            return self._finish()
        except KeyboardInterrupt:  # with a checkpoint, written first, where one can be
            self._checkpoint_on_interrupt()
            raise

    def _train(self, start: int) -> None:
        steps = self.feed.steps(start)
        while self.step < self.total:
            reason = self._reason_to_stop() if self.step > start else None
            if reason:
                self._stop_early(reason)
                break
            self._feed_step(steps)
            self._send_evaluations(self.feed.evaluations(self.step, self.total))
            if self.feed.waits_for_results:
                self._drain()
            if self.job.checkpoint_every and self.step % self.job.checkpoint_every == 0 and self.step < self.total:
                self._checkpoint()
            self._absorb_ready()
        self._drain()

    def _feed_step(self, steps: Iterator[list[Tensors]]) -> None:
        """The next step's training messages, each as the credit window allows. The step is made only once its first
        message may go: one made and never sent would have moved the feed on (a text's position) past a checkpoint."""
        self._wait_for_credit()
        for tensors, meta in next(steps):
            self._wait_for_credit()
            self.pipeline.send_parts(Kind.FORWARD, self.sent, self.routes.parts(tensors), meta)
            self.sent += 1
            self.fed_of_step += 1
        self.step += 1
        self.fed_of_step = 0

    def _wait_for_credit(self) -> None:
        while not self.schedule.may_feed(self.sent, self.done, self.pipeline.feed_over_bound()):
            self._absorb(self._receive())

    def _send_evaluations(self, evaluations: list[EvalMessage]) -> None:
        for evaluation in evaluations:
            self.pipeline.send_parts(Kind.EVAL, evaluation.number, self.routes.parts(evaluation.tensors), evaluation.meta)

    def _reason_to_stop(self) -> Optional[str]:
        """Why training should end before its last step: the time limit is up, or an evaluation was accurate enough."""
        if self.job.time_limit and time.monotonic() - self.started >= self.job.time_limit:
            return "time_limit"
        if self.feed.accurate_enough():
            return "accuracy"
        return None

    def _stop_early(self, reason: str) -> None:
        """Training ends here: what was sent is the whole run, and it ends with the evaluation due at its end."""
        why = f"time limit of {self.job.time_limit}s reached" if reason == "time_limit" else \
            f"test accuracy reached stop_at_accuracy = {self.job.stop_at_accuracy:g}"
        log.info("%s: stopping after %d of %d %ss", why, self.step, self.total, self.feed.step_name)
        self.stopped_early = reason
        self.total = self.step
        self._send_evaluations(self.feed.evaluations(self.step, self.total))

    def _drain(self) -> None:
        while self.done < self.sent or self.feed.awaited() is not None:
            self._absorb(self._receive())

    def _checkpoint(self) -> None:
        """A consistent cut between steps: no message in flight anywhere, every stage saved after the same one."""
        self._drain()
        self.pipeline.request_all("flush", timeout=REQUEST_TIMEOUT, stall_timeout=STALL_SECONDS)
        checkpoint_stages(self.pipeline, self.checkpoints, self.feed.position(self.step, self.sent))
        self._save_segment()

    def _save_segment(self, status: str = "running") -> None:
        segment = self.segments.current
        segment.to_step, segment.recoveries, segment.resent_batches = self.step, self.recoveries, self.resent
        self.segments.save(status)

    def _checkpoint_on_interrupt(self) -> None:
        """A last checkpoint if the pipeline can still give one and the interrupt came between steps; else the last
        periodic one stays what --resume uses."""
        resume_from = self.checkpoints.position().step
        name = self.feed.step_name
        if self.fed_of_step:
            log.warning("interrupted in the middle of %s %d, which a checkpoint would split; --resume continues from "
                        "%s %d, the last checkpoint", name, self.step, name, resume_from)
            return
        gone = self.pipeline.gone(grace=0.0)
        if gone is not None:
            log.error("interrupted; no checkpoint written: stage %d has lost its connection; --resume continues from %s %d",
                      gone, name, resume_from)
            return
        log.warning("interrupted: writing a checkpoint at %s %d first (interrupt again to skip it)", name, self.step)
        try:
            self._checkpoint()
        except PipelineError as error:
            log.error("no checkpoint written (%s); --resume continues from %s %d", error, name, resume_from)

    def _recover(self, loss: WorkerLost, retry: int) -> int:
        """A new worker for the lost stage, every stage rolled back to the last checkpoint, and what was lost re-sent."""
        position = self.checkpoints.position()
        self.budget.resuming_from(position.step, loss)
        checkpointed = self.feed.sent_by(position)
        log.warning("%s; replacing its worker%s and resuming every stage from %s %d (%d %s re-sent)", loss,
                    f" (try {retry + 1} of this recovery)" if retry else "", self.feed.step_name, position.step,
                    self.sent - checkpointed, plural(self.feed.message_name))
        self.recoveries += 1
        self.resent += self.sent - checkpointed
        self.sent = self.done = checkpointed  # counted once, whichever try succeeds
        self.replacements.bring_back(loss)
        self.job_id = self.pipeline.job_id = f"{self.base_job_id}-r{self.recoveries}"  # stale messages no longer match
        self.pipeline.forget_silence()
        start = self._rewind(position)
        self._save_segment()
        return start

    def _rewind(self, position: Position) -> int:
        """Counters, the feed and every stage back to a checkpoint (or to the start of the run); the step to go on from."""
        self.step = position.step
        self.sent = self.done = self.feed.sent_by(position)
        self.heads_in.clear()
        self.fed_of_step = 0
        self.feed.restore(position, self)
        self.configure(restore=position.step > 0)
        return position.step

    def _receive(self) -> Message:
        """The next result; one that cannot come any more (every stage idle) fails the run, naming where it was lost."""
        return self.pipeline.receive_until_stalled(STALL_SECONDS, self._lost)

    def _lost(self) -> StageFailed:
        """Where a result that cannot come was lost: the first stage, in the graph's order, that trained on fewer
        messages than were sent."""
        steps = [int(status.get("steps", -1)) for status in self.pipeline.status]
        idle = f"every stage has been idle for {self.pipeline.idle_for():.0f}s"
        order = self.topology.order()
        if self.done < self.sent:
            stage = next((index for index in order if steps[index] < self.sent), order[-1])
            name, where = self.feed.message_name, stage_label(stage, "" if self.topology.chain else self.topology.names[stage])
            return StageFailed(stage, f"{name} {self.done} never came back and {idle}: {where} trained on "
                                      f"{steps[stage]} of the {self.sent} {plural(name)} sent, so it was lost at {where}")
        return StageFailed(order[-1], f"{self.feed.awaited()} and {idle}: the rest were lost")

    def _absorb_ready(self) -> None:
        while (message := self.pipeline.receive(0)) is not None:
            self._absorb(message)

    def _absorb(self, message: Message) -> None:
        if message.kind is Kind.TRAIN_RESULT:
            shown = self.feed.trained(message)
            if not self._every_head_in(message.batch):
                return
            self.done += 1
            self.trained_samples += int(message.meta["count"])
            self.last_result = time.monotonic()
            self.first_result = self.first_result or self.last_result
            self._show(shown)
        elif message.kind is Kind.EVAL_RESULT:
            self._show(self.feed.evaluated(message, self))
        else:
            log.warning("unexpected %s from stage %d", message.kind.name, message.sender)

    def _every_head_in(self, batch: int) -> bool:
        """A training message is done once every head has reported it."""
        heads = len(self.topology.heads)
        if heads == 1:
            return True
        reported = self.heads_in.get(batch, 0) + 1
        if reported < heads:
            self.heads_in[batch] = reported
            return False
        self.heads_in.pop(batch, None)
        return True

    def _show(self, shown: Optional[Shown]) -> None:
        if shown is not None:
            self.progress.update(shown.steps, shown.steps * self.job.batch_size, shown.accuracy, shown.note)

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields` with the time, the throughput and every stage's metrics, as one metrics line (and TensorBoard)."""
        worker_metrics = [reply.meta["metrics"] for reply in self.pipeline.request_all("metrics")]
        elapsed = time.monotonic() - self.started
        record = {**fields, "elapsed": elapsed, "samples_per_second": self.trained_samples / elapsed,
                  "workers": worker_metrics, "worker_errors": self.pipeline.refused_by_stage}
        self.folder.append_metrics(record)
        self.tensorboard.write(record)
        return record

    def metrics_until(self, evaluations: int) -> list[dict[str, Any]]:
        """The first `evaluations` metrics lines; those written after them (after a checkpoint) are rolled back."""
        records = read_metrics(self.folder.path)[:evaluations] if evaluations else []
        if self.folder.metrics_path.is_file():
            self.folder.rewrite_metrics(records)
        return records

    def _finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        cpu = time.process_time() - self.cpu_started
        self._save_segment("complete")
        replies = self.pipeline.request_all("metrics", {"spans": self.job.record_spans, "profile": self.job.profile})
        final = [reply.meta["metrics"] for reply in replies]
        self.folder.save_state([state_of(reply) for reply in self.pipeline.request_all("state")])
        if self.job.record_spans:
            self.folder.write_json("spans.json", [spans_from_arrays(reply.tensors) for reply in replies])
        timing = Timing(self.total, self.first_step, wall, self.trained_samples, self.first_result, self.last_result)
        return {
            "job": self.job.name, "job_id": self.job_id, "mode": self.job.mode.value, "batch_size": self.job.batch_size,
            "stopped_at_time_limit": self.stopped_early == "time_limit", "stopped_at_accuracy": self.stopped_early == "accuracy",
            "link_delay_ms": self.job.link_delay_ms, "link": describe(self.job.link_delay_ms),
            "feed_link": self.pipeline.link.stats(), "wall_seconds": wall, **self.segments.totals(),
            "seconds_to_first_result": (self.first_result or time.monotonic()) - self.started,
            "first_result_at": time.time() - (time.monotonic() - (self.first_result or time.monotonic())),
            "coordinator_cpu_fraction": cpu / wall,
            "workers": self.workers, "worker_metrics": final, "worker_errors": [sum(m["errors"].values()) for m in final],
            **self.feed.summary(timing),
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


def plural(noun: str) -> str:
    """"batches", "chunks", "steps"."""
    return noun + ("es" if noun.endswith("ch") else "s")
