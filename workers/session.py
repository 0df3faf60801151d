"""One configured job on a worker: its stage, its outboxes, its counters and its heartbeat.

A worker outlives its jobs (a `configure` replaces the session, `stop` ends
it); everything that belongs to one job lives here, so ending a job is
closing one object.

Every data message this stage sends (activations and evaluation batches
downstream, targets upstream, results to the coordinator) goes into the
outbox of its socket (`dni.protocol.outbox`); the worker's event loop writes
outboxes as their peers take them, so nothing here ever waits to send. With
the job's `link_delay_ms` a message is due that much later. Error reports and
heartbeats are not data: they are sent at once or dropped. Ending the session
drops what the outboxes still hold: the job is over.
"""
from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from typing import Any, Optional

import torch
import zmq

from dni.errors import ConfigError, DniError
from dni.protocol import Kind, Limits, Message, Outbox, Outboxes, open_socket, resolved, send_message
from dni.protocol.refusals import RefusalLog
from dni.spec import StageAssignment
from dni.workers.build import build_stage
from dni.workers.checkpoint import load_checkpoint
from dni.workers.compute import StageCompute
from dni.workers.devices import arrays_on_host, resolve_device
from dni.workers.heartbeat import Heartbeat
from dni.workers.interface import Shape
from dni.workers.profiling import StageProfile
from dni.workers.sequence_stage import SequenceStage, build_sequence_stage
from dni.workers.timing import DeviceClock, Timeline
from dni.workers.validation import all_finite

__all__ = ["NonFiniteOutput", "Session"]

log = logging.getLogger("dni.worker")


class NonFiniteOutput(DniError):
    """This stage produced NaN or Inf: its own failure, not its input's."""


class Session:
    """One configured job on this worker: its stage, its outboxes, its counters."""

    def __init__(self, context: zmq.Context, config: StageAssignment, limits: Limits, refusals: RefusalLog) -> None:
        self.config = config
        self.limits = limits
        self.refusals = refusals
        # beating while the stage builds and restores, so a worker that freezes there is noticed as soon as anywhere
        self.heartbeat = Heartbeat(context, config.coordinator, limits, config.job, config.index, _configuring)
        self.heartbeat.start()
        try:
            self.compute, self.output_shape = self._build_and_restore(config)
        except BaseException:
            self.heartbeat.stop()
            raise
        delay = config.link_delay_ms / 1000
        self.outboxes = Outboxes()  # written in this order: neighbours first, the coordinator only counts results
        self.upstream = self._outbox(context, config.upstream, delay, "upstream")
        self.downstream = self._outbox(context, config.downstream, delay, "downstream")
        self.report_socket = self._connect(context, config.coordinator, limits)
        self.report = self.outboxes.add(Outbox(self.report_socket, delay, name="coordinator"))
        self.messages: Counter[str] = Counter()
        self.flush_waiters: list[bytes] = []  # control identities owed a reply once no batch awaits its target
        self.failure: Optional[str] = None
        self.handled = 0  # data messages taken in: progress the coordinator can see even while no result comes out
        self.tick = self.last_heard = time.monotonic()
        self.heartbeat.status = self.status
        self.profile = StageProfile() if config.profile else None
        self.setup_seconds = self.timeline.restart()  # the wall clock of the job starts when the stage is ready
        self.cpu_started = time.process_time()

    def _build_and_restore(self, config: StageAssignment) -> tuple[StageCompute | SequenceStage, Shape]:
        """The stage on its device, with the checkpoint's state when it resumes one."""
        self.device = resolve_device(config.spec.device, config.index)
        clock = DeviceClock(self.device) if self.device.startswith("cuda") else None
        self.timeline = Timeline(config.record_spans, clock)
        torch.set_num_threads(config.threads)
        compute, output_shape = self._build(config)
        self.schedule = compute.schedule
        if config.restore:
            try:
                load_checkpoint(config.restore, compute)
            except (OSError, RuntimeError, KeyError, ValueError) as error:
                raise ConfigError(f"cannot restore stage {config.index} from {config.restore}: {error}") from error
        return compute, output_shape

    def _build(self, config: StageAssignment) -> tuple[StageCompute | SequenceStage, Shape]:
        """The stage's arithmetic: a sequence job's recurrent core or readout, else a feed-forward stage."""
        if config.truncation:
            return build_sequence_stage(config, self.device, self.timeline)
        modules = build_stage(config.spec, index=config.index, input_shape=config.input_shape, mode=config.mode,
                              num_classes=config.num_classes, seed=config.seed, is_last=config.is_last, device=self.device)
        return StageCompute.assigned(config, modules, self.timeline), modules.output_shape

    @staticmethod
    def _connect(context: zmq.Context, address: str, limits: Limits) -> zmq.Socket:
        socket = open_socket(context, zmq.PUSH, limits)
        socket.connect(resolved(address))
        return socket

    def _outbox(self, context: zmq.Context, address: Optional[str], delay: float, name: str) -> Optional[Outbox]:
        if not address:
            return None
        return self.outboxes.add(Outbox(self._connect(context, address, self.limits), delay, name=name))

    def silence(self) -> float:
        """Seconds since the coordinator was last heard; past COORDINATOR_TIMEOUT the job ends."""
        return time.monotonic() - self.last_heard

    def status(self) -> dict[str, Any]:
        """What each heartbeat tells the coordinator (read from the heartbeat thread: plain values only)."""
        return {"busy_for": time.monotonic() - self.tick, "steps": self.compute.steps, "handled": self.handled,
                "pending": self.compute.in_flight, "refused": self.refusals.total, "failure": self.failure,
                "held": self.outboxes.held()}

    def metrics(self, profile: bool = False) -> dict[str, Any]:
        """The `metrics` reply: time by activity, messages, refusals, staleness (and the profile, when asked)."""
        compute = self.compute
        metrics = {
            "stage": self.config.index,
            "steps": compute.steps,
            "wall": self.timeline.wall(),
            "cpu_seconds": time.process_time() - self.cpu_started,  # this process's, its ZeroMQ and beat threads' too
            "setup_seconds": self.setup_seconds,
            "time": dict(self.timeline.totals),
            "device_time": self.timeline.device_totals(),
            "messages": dict(self.messages),
            "errors": dict(self.refusals.counts),
            "staleness": {str(k): v for k, v in sorted(compute.staleness.items())},
            "stash_refreshes": compute.stash.refreshes if compute.stash is not None else 0,
            "pending": compute.in_flight,
            "synthesizer_loss": compute.synthesizer_loss,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "link": self.outboxes.stats(),
        }
        if profile and self.profile is not None:
            metrics["profile"] = self.profile.summary(compute.steps)
        return metrics

    def send(self, outbox: Outbox, kind: Kind, batch: int, meta: dict[str, Any],
             tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Put a data message into `outbox`; the event loop writes it."""
        arrays = arrays_on_host(tensors) if tensors else {}
        self.timeline.lap("to_host")
        for name, array in arrays.items():
            self.check_finite_output(name, array, batch)
        self.timeline.lap("checks")
        outbox.put(Message(kind, self.config.job, batch, self.compute.steps, self.config.index, meta, arrays))
        self.messages[_SENT[kind]] += 1
        self.timeline.lap("encode")

    def write(self) -> None:
        """Send what the outboxes hold that is due, as far as the peers take it."""
        if self.outboxes.write():
            self.timeline.lap("send")

    def check_finite_output(self, name: str, values: Any, batch: int) -> None:
        """This stage's own output must be finite: NaN/Inf produced here ends the run, naming this stage."""
        if all_finite(values):
            return
        if self.config.nonfinite == "reject":
            raise NonFiniteOutput(f"its output {name!r} for batch {batch} holds NaN or Inf (nonfinite = \"reject\")")
        self.messages["nonfinite_sent"] += 1

    def notify(self, kind: Kind, meta: dict[str, Any]) -> None:
        """Tell the coordinator something in passing; dropped rather than waited for if it is not reading."""
        message = Message(kind, self.config.job, -1, self.compute.steps, self.config.index, meta)
        try:
            send_message(self.report_socket, message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.messages["dropped_notifications"] += 1

    def close(self) -> None:
        dropped = self.outboxes.drop()
        if dropped:
            log.info("stage %d dropped %d message(s) its peers had not taken", self.config.index, dropped)
        if self.profile is not None:
            self.profile.stop()
        self.heartbeat.stop()
        for outbox in self.outboxes.all:
            outbox.socket.close()


_SENT = {kind: f"sent_{kind.name.lower()}" for kind in Kind}


def _configuring() -> dict[str, Any]:
    """The heartbeat's status before the stage exists."""
    return {"steps": 0, "handled": 0, "configuring": True}
