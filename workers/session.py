"""One configured job on a worker: its stage, its outgoing sockets, its counters and its heartbeat.

A worker outlives its jobs (a `configure` replaces the session, `stop` ends
it); everything that belongs to one job lives here, so ending a job is
closing one object. Sends on the data path wait while the peer's queue is
full (backpressure) but keep answering control through `while_blocked`,
so a worker whose neighbour died can still be stopped.
"""
from __future__ import annotations

import math
import resource
import time
from collections import Counter
from typing import Any, Callable, Optional

import numpy as np
import torch
import zmq

from dni.errors import ConfigError, DniError
from dni.protocol import Kind, Limits, Message, open_socket, resolved, send_message
from dni.protocol.refusals import RefusalLog
from dni.spec import StageAssignment
from dni.workers.build import build_stage
from dni.workers.checkpoint import load_checkpoint
from dni.workers.compute import StageCompute
from dni.workers.devices import resolve_device, synchronizer, to_host
from dni.workers.heartbeat import Heartbeat
from dni.workers.timing import Timeline

__all__ = ["COORDINATOR_TIMEOUT", "EXIT_COORDINATOR_SILENT", "EXIT_STOPPED", "NonFiniteOutput", "Session", "SessionEnded"]

COORDINATOR_TIMEOUT = 20.0  # end the job when the coordinator has been silent this long
EXIT_STOPPED = 0  # a --once worker whose job was stopped by its coordinator
EXIT_COORDINATOR_SILENT = 3  # a --once worker that ended its job because the coordinator fell silent


class NonFiniteOutput(DniError):
    """This stage produced NaN or Inf: its own failure, not its input's."""


class SessionEnded(DniError):
    """The job ended (stopped, or its coordinator fell silent) while this worker waited to send."""


class Session:
    """One configured job on this worker: its stage, its outgoing sockets, its counters."""

    def __init__(self, context: zmq.Context, config: StageAssignment, limits: Limits, refusals: RefusalLog,
                 while_blocked: Callable[[zmq.Socket], None]) -> None:
        self.config = config
        self.limits = limits
        self.refusals = refusals
        self.while_blocked = while_blocked
        self.device = resolve_device(config.spec.device, config.index)
        self.timeline = Timeline(config.record_spans, settle=synchronizer(self.device))
        torch.set_num_threads(config.threads)
        modules = build_stage(config.spec, index=config.index, input_shape=config.input_shape, mode=config.mode,
                              num_classes=config.num_classes, seed=config.seed, is_last=config.is_last, device=self.device)
        self.output_shape = modules.output_shape
        self.compute = StageCompute(config, modules, self.timeline)
        if config.restore:
            try:
                load_checkpoint(config.restore, self.compute)
            except (OSError, RuntimeError, KeyError, ValueError) as error:
                raise ConfigError(f"cannot restore stage {config.index} from {config.restore}: {error}") from error
        self.report = self._connect(context, config.coordinator, limits)
        self.downstream = self._connect(context, config.downstream, limits) if config.downstream else None
        self.upstream = self._connect(context, config.upstream, limits) if config.upstream else None
        self.messages: Counter[str] = Counter()
        self.flush_waiters: list[bytes] = []  # control identities owed a reply once no batch awaits its target
        self.failure: Optional[str] = None
        self.handled = 0  # data messages taken in: progress the coordinator can see even while no result comes out
        self.tick = self.last_heard = time.monotonic()
        self.heartbeat = Heartbeat(context, config.coordinator, limits, config.job, config.index, self.status)
        self.heartbeat.start()
        self.setup_seconds = self.timeline.restart()  # the wall clock of the job starts when the stage is ready

    @staticmethod
    def _connect(context: zmq.Context, address: str, limits: Limits) -> zmq.Socket:
        socket = open_socket(context, zmq.PUSH, limits)
        socket.connect(resolved(address))
        return socket

    def silence(self) -> float:
        """Seconds since the coordinator was last heard; past COORDINATOR_TIMEOUT the job ends."""
        return time.monotonic() - self.last_heard

    def status(self) -> dict[str, Any]:
        """What each heartbeat tells the coordinator (read from the heartbeat thread: plain values only)."""
        return {"busy_for": time.monotonic() - self.tick, "steps": self.compute.steps, "handled": self.handled,
                "pending": self.compute.in_flight, "refused": self.refusals.total, "failure": self.failure}

    def metrics(self) -> dict[str, Any]:
        """The `metrics` reply: time by activity, messages, refusals, staleness."""
        compute = self.compute
        return {
            "stage": self.config.index,
            "steps": compute.steps,
            "wall": self.timeline.wall(),
            "setup_seconds": self.setup_seconds,
            "time": dict(self.timeline.totals),
            "messages": dict(self.messages),
            "errors": dict(self.refusals.counts),
            "staleness": {str(k): v for k, v in sorted(compute.staleness.items())},
            "pending": compute.in_flight,
            "synthesizer_loss": compute.synthesizer_loss,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    def send(self, socket: zmq.Socket, kind: Kind, batch: int, meta: Optional[dict[str, Any]] = None,
             tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Send on a data path; waits while the peer's queue is full or the peer is gone (backpressure),
        answering control requests meanwhile, so a worker whose neighbour died can still be stopped."""
        with self.timeline("transport"):
            arrays = {name: to_host(tensor) for name, tensor in (tensors or {}).items()}
        for name, array in arrays.items():
            self.check_finite_output(name, array, batch)
        with self.timeline("transport"):
            message = Message(kind, self.config.job, batch, self.compute.steps, self.config.index, meta or {}, arrays)
            while True:
                try:
                    send_message(socket, message, flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    self.while_blocked(socket)
        self.messages[f"sent_{kind.name.lower()}"] += 1

    def check_finite_output(self, name: str, values: Any, batch: int) -> None:
        """This stage's own output must be finite: NaN/Inf produced here ends the run, naming this stage."""
        finite = math.isfinite(values) if isinstance(values, float) else bool(np.isfinite(values).all())
        if finite:
            return
        if self.config.nonfinite == "reject":
            raise NonFiniteOutput(f"its output {name!r} for batch {batch} holds NaN or Inf (nonfinite = \"reject\")")
        self.messages["nonfinite_sent"] += 1

    def notify(self, kind: Kind, meta: dict[str, Any]) -> None:
        """Tell the coordinator something in passing; dropped rather than waited for if it is not reading."""
        message = Message(kind, self.config.job, -1, self.compute.steps, self.config.index, meta)
        try:
            send_message(self.report, message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.messages["dropped_notifications"] += 1

    def close(self) -> None:
        self.heartbeat.stop()
        for socket in (self.report, self.downstream, self.upstream):
            if socket is not None:
                socket.close()
