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
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import zmq

from dni.errors import ConfigError, DniError
from dni.protocol import Kind, Limits, Message, Outbox, Outboxes, open_socket, resolved, send_message
from dni.protocol.refusals import RefusalLog
from dni.spec import StageAssignment
from dni.workers.loop.actions import Role
from dni.workers.build.builder import assigned_stage
from dni.workers.stage.checkpoint import load_checkpoint
from dni.workers.stage.compute import StageCompute
from dni.workers.loop.devices import arrays_on_host, resolve_device
from dni.workers.loop.heartbeat import Heartbeat
from dni.workers.build.contracts import Shape
from dni.workers.loop.profiling import StageProfile
from dni.workers.stage.timing import DeviceClock, Timeline
from dni.workers.loop.gather import Gather
from dni.workers.loop.validation import all_finite

__all__ = ["Links", "NonFiniteOutput", "Session"]

log = logging.getLogger("dni.worker")


class NonFiniteOutput(DniError):
    """This stage produced NaN or Inf: its own failure, not its input's."""


@dataclass
class Links:
    """A session's outgoing sockets as outboxes, one per edge, written in this order: the stages it feeds and those
    that feed it first, the coordinator only counts results. `inputs` holds, per input edge, the outbox of its
    producer's backward socket (None for the data); `outputs`, per output edge, its consumer's forward socket.
    `report_socket` also carries notifications, sent at once or dropped."""
    outboxes: Outboxes
    inputs: tuple[Optional[Outbox], ...]
    outputs: tuple[Outbox, ...]
    report: Outbox
    report_socket: Any

    @classmethod
    def connect(cls, context: zmq.Context, config: StageAssignment, limits: Limits) -> "Links":
        delay, outboxes = config.link_delay_ms / 1000, Outboxes()

        def outbox(address: str, name: str) -> Outbox:
            return outboxes.add(Outbox(_connect(context, address, limits), delay, name=name))
        inputs = tuple(outbox(edge.address, f"to {edge.name}") if edge.address else None for edge in config.inputs)
        outputs = tuple(outbox(edge.address, f"to {edge.name}") for edge in config.outputs if edge.address)
        report_socket = _connect(context, config.coordinator, limits)
        return cls(outboxes, inputs, outputs, outboxes.add(Outbox(report_socket, delay, name="coordinator")),
                   report_socket)


class Session:
    """One configured job on this worker: its stage, its outboxes, its counters.

    `open` builds the stage (restoring its checkpoint), connects its sockets and starts its heartbeat; the
    constructor takes them ready, so a test drives the datapath with a stage and outboxes of its own.
    """

    def __init__(self, config: StageAssignment, compute: StageCompute, output_shape: Shape, links: Links, *,
                 device: str, timeline: Timeline, limits: Limits, refusals: RefusalLog,
                 heartbeat: Optional[Heartbeat] = None, edge_shapes: Optional[dict[str, Shape]] = None) -> None:
        self.config, self.compute, self.output_shape = config, compute, output_shape
        self.edge_shapes = edge_shapes or {}  # what each output edge carries, where the module makes one per edge
        self.device, self.timeline, self.limits, self.refusals = device, timeline, limits, refusals
        self.role = Role.LAST if config.is_last else Role.HIDDEN
        self.takes_labels = config.is_last or (config.mode.conditioned and bool(compute.interfaces)) or \
            bool(getattr(compute.module, "wants_labels", False))  # the coordinator sends them straight here
        self.gather = Gather(config, self.takes_labels)
        self.schedule = compute.schedule
        self.outboxes, self.inputs, self.outputs = links.outboxes, links.inputs, links.outputs
        self.report, self.report_socket = links.report, links.report_socket
        self.messages: Counter[str] = Counter()
        self.flush_waiters: list[bytes] = []  # control identities owed a reply once no batch awaits its target
        self.failure: Optional[str] = None
        self.handled = 0  # data messages taken in: progress the coordinator can see even while no result comes out
        self.tick = self.last_heard = time.monotonic()
        self.heartbeat = heartbeat
        if heartbeat is not None:
            heartbeat.status = self.status
        self.consumers = {edge.peer: index for index, edge in enumerate(config.outputs)}  # each output edge's target sender
        self.profile = StageProfile() if config.profile else None
        self.setup_seconds = self.timeline.restart()  # the wall clock of the job starts when the stage is ready
        self.cpu_started = time.process_time()

    @classmethod
    def open(cls, context: zmq.Context, config: StageAssignment, limits: Limits, refusals: RefusalLog) -> "Session":
        """The session of `config`: beating while the stage builds and restores, so a worker that freezes there
        is noticed as soon as anywhere."""
        heartbeat = Heartbeat(context, config.coordinator, limits, config.job, config.index, _configuring)
        heartbeat.start()
        try:
            device = resolve_device(config.spec.device, config.index)
            timeline = Timeline(config.record_spans, DeviceClock(device) if device.startswith("cuda") else None)
            torch.set_num_threads(config.threads)
            compute, modules = assigned_stage(config, device, timeline)
            _restore(config, compute)
            links = Links.connect(context, config, limits)
        except BaseException:
            heartbeat.stop()
            raise
        return cls(config, compute, modules.output_shape, links, device=device, timeline=timeline, limits=limits,
                   refusals=refusals, heartbeat=heartbeat, edge_shapes=modules.edge_shapes)

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
            "name": self.config.name,
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
            "edges": compute.edge_metrics(),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "link": self.outboxes.stats(),
        }
        if profile and self.profile is not None:
            metrics["profile"] = self.profile.summary(compute.steps)
        return metrics

    def send(self, outboxes: Union[Outbox, Sequence[Outbox]], kind: Kind, batch: int, meta: dict[str, Any],
             tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Put a data message into `outboxes` (the same arrays, copied to the host once); the event loop writes it."""
        arrays = arrays_on_host(tensors) if tensors else {}
        self.timeline.lap("to_host")
        for name, array in arrays.items():
            self.check_finite_output(name, array, batch)
        self.timeline.lap("checks")
        message = Message(kind, self.config.job, batch, self.compute.steps, self.config.index, meta, arrays)
        for outbox in (outboxes,) if isinstance(outboxes, Outbox) else outboxes:
            outbox.put(message)
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
            log.info("%s dropped %d message(s) its peers had not taken", self.config.where, dropped)
        if self.profile is not None:
            self.profile.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for outbox in self.outboxes.all:
            outbox.socket.close()


def _connect(context: zmq.Context, address: str, limits: Limits) -> zmq.Socket:
    socket = open_socket(context, zmq.PUSH, limits)
    socket.connect(resolved(address))
    return socket


def _restore(config: StageAssignment, compute: StageCompute) -> None:
    """The stage's state from the checkpoint it resumes, if any."""
    if config.restore:
        try:
            load_checkpoint(config.restore, compute)
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise ConfigError(f"cannot restore stage {config.index} from {config.restore}: {error}") from error


_SENT = {kind: f"sent_{kind.name.lower()}" for kind in Kind}


def _configuring() -> dict[str, Any]:
    """The heartbeat's status before the stage exists."""
    return {"steps": 0, "handled": 0, "configuring": True}
