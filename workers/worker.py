"""A worker process: serves one stage of one job at a time over ZeroMQ.

Communication lives here, arithmetic in `compute`. The worker binds three
sockets from one address: control (ROUTER, request/reply with the
coordinator), forward (PULL: activations and evaluation batches from upstream)
and backward (PULL: targets from downstream). It polls the forward socket only
while its window of batches awaiting targets has room, which is what makes
`backprop` update-locked and keeps the unlocked modes bounded.
"""
from __future__ import annotations

import json
import logging
import math
import os
import resource
import socket as host
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import zmq

from dni.errors import ConfigError, DniError
from dni.files import write_text_atomically
from dni.protocol import DEFAULT_LIMITS, Endpoints, Kind, Limits, Message, ProtocolError, decode, open_socket, receive_frames, resolved, send_message, worker_endpoints
from dni.protocol.refusals import RefusalLog
from dni.protocol.security import Keys, check_plaintext_allowed, make_server, secure_context
from dni.spec import StageAssignment
from dni.workers.build import build_stage
from dni.workers.checkpoint import load_checkpoint, save_checkpoint
from dni.workers.compute import StageCompute
from dni.workers.devices import resolve_device, synchronizer, to_device, to_host
from dni.workers.heartbeat import Heartbeat
from dni.workers.timing import Timeline

log = logging.getLogger("dni.worker")
POLL_SECONDS = 1.0
COORDINATOR_TIMEOUT = 20.0  # end the job when the coordinator has been silent this long
EXIT_STOPPED = 0  # a --once worker whose job was stopped by its coordinator
EXIT_COORDINATOR_SILENT = 3  # a --once worker that ended its job because the coordinator fell silent


class Rejected(DniError):
    """A message that is well-formed on the wire but not acceptable to this stage now.

    `lost` is the message of a batch of this job that the refusal drops for good (its
    data was unusable), which the coordinator must hear of; a duplicate or a
    stranger's message loses nothing.
    """

    def __init__(self, text: str, lost: Optional[Message] = None) -> None:
        super().__init__(text)
        self.lost = lost


class NonFiniteOutput(DniError):
    """This stage produced NaN or Inf: its own failure, not its input's."""


class SessionEnded(DniError):
    """The job ended (stopped, or its coordinator fell silent) while this worker waited to send."""


class Session:
    """One configured job on this worker: its stage, its outgoing sockets, its counters."""

    def __init__(self, context: zmq.Context, config: StageAssignment, limits: Limits, refusals: RefusalLog,
                 while_blocked: Callable[[zmq.Socket], None]) -> None:
        self.config = config
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
        self.flush_waiters: list[bytes] = []
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

    def status(self) -> dict[str, Any]:
        """What each heartbeat tells the coordinator (read from the heartbeat thread: plain values only)."""
        return {"busy_for": time.monotonic() - self.tick, "steps": self.compute.steps, "handled": self.handled,
                "pending": len(self.compute.pending), "refused": self.refusals.total, "failure": self.failure}

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


class Worker:
    def __init__(self, bind: str, once: bool = False, limits: Limits = DEFAULT_LIMITS, keys: Optional[Keys] = None,
                 ready_file: Optional[str] = None) -> None:
        self.once = once
        self.limits = limits
        if keys is None:  # plaintext only where no socket reaches beyond this machine
            check_plaintext_allowed([bind], "worker address")
        self.keys = keys
        self.context = zmq.Context()
        # with keys, every socket of this context connects as a CURVE client and the bound ones are CURVE servers
        self.authenticator = secure_context(self.context, keys) if keys is not None else None
        endpoints = worker_endpoints(bind)
        self.control = self._bind(zmq.ROUTER, endpoints.control)
        self.forward_in = self._bind(zmq.PULL, endpoints.forward)
        self.backward_in = self._bind(zmq.PULL, endpoints.backward)
        self.endpoints = Endpoints(*(_bound_address(socket) for socket in (self.control, self.forward_in, self.backward_in)))
        self.session: Optional[Session] = None
        self.refusals = RefusalLog(log, "refused a message")
        self.running = True
        self.exit_code = EXIT_STOPPED
        if ready_file:
            _write_ready_file(Path(ready_file), self.endpoints)

    def _bind(self, kind: int, address: str) -> zmq.Socket:
        socket = open_socket(self.context, kind, self.limits)
        if self.keys is not None:
            make_server(socket, self.keys)
        socket.bind(address)
        return socket

    def serve(self) -> int:
        """Serve until stopped; returns the process exit code (EXIT_STOPPED or EXIT_COORDINATOR_SILENT)."""
        log.info("worker %d serving at %s", os.getpid(), self.endpoints.control)
        try:
            while self.running:
                self._serve_once()
                self.refusals.summarise_due()
        finally:
            self.close()
        return self.exit_code

    def close(self) -> None:
        if self.session:
            self.session.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)

    def _serve_once(self) -> None:
        session = self.session
        if session is not None:
            session.tick = time.monotonic()
            if session.tick - session.last_heard > COORDINATOR_TIMEOUT:
                self._end_session(f"the coordinator has been silent for {session.tick - session.last_heard:.0f}s",
                                  EXIT_COORDINATOR_SILENT)
                return
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        taking_input = session is not None and session.compute.can_take_batch()
        if taking_input:
            poller.register(self.forward_in, zmq.POLLIN)
        if session is not None:
            poller.register(self.backward_in, zmq.POLLIN)
        waiting = "wait_input" if taking_input or session is None else "wait_gradient"
        if session is None:
            ready = dict(poller.poll(POLL_SECONDS * 1000))
        else:
            with session.timeline(waiting):
                ready = dict(poller.poll(POLL_SECONDS * 1000))
        if self.control in ready:
            self._handle(self.control, self._on_control, "control")
        if self.session is not None and self.backward_in in ready:
            self._handle(self.backward_in, self._on_backward)
        if self.session is not None and self.forward_in in ready:
            self._handle(self.forward_in, self._on_forward)

    def _timed(self, activity: str):
        return self.session.timeline(activity) if self.session is not None else nullcontext()

    def _handle(self, socket: zmq.Socket, handler, activity: Optional[str] = None) -> None:
        """Receive one message and hand it over; data handlers time their own parts, others count as `activity`."""
        with self._timed("transport"):
            try:
                frames = receive_frames(socket, zmq.NOBLOCK)
            except zmq.Again:  # readable without a message (e.g. a security handshake): nothing to do
                return
        try:
            with self._timed(activity) if activity else nullcontext():
                handler(frames)
        except (ProtocolError, Rejected, ConfigError) as error:
            self._reject(type(error).__name__, str(error), getattr(error, "lost", None))
        except SessionEnded:
            pass
        except Exception as error:  # the stage's own code failed (or produced NaN): the run cannot go on
            self._stage_failed(error)

    def _while_blocked(self, socket: zmq.Socket) -> None:
        """A send waits: answer control requests meanwhile; end the wait if the job ends."""
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLOUT)
        poller.register(self.control, zmq.POLLIN)
        if self.control in dict(poller.poll(POLL_SECONDS * 1000)):
            try:
                self._on_control(receive_frames(self.control, zmq.NOBLOCK))
            except zmq.Again:
                pass
        session = self.session
        if session is not None and time.monotonic() - session.last_heard > COORDINATOR_TIMEOUT:
            self._end_session(f"the coordinator has been silent for {time.monotonic() - session.last_heard:.0f}s "
                              "while this stage waited to send", EXIT_COORDINATOR_SILENT)
        if self.session is not session or session is None:
            raise SessionEnded

    def _reject(self, category: str, text: str, lost: Optional[Message] = None) -> None:
        """Bad input: counted, logged within limits, and the worker goes on; a lost batch is reported at once."""
        self.refusals.refuse(category, text)
        if lost is not None and self.session is not None:
            self.session.notify(Kind.ERROR, {"category": category, "error": text[:500], "lost_batch": lost.batch,
                                             "from_stage": lost.sender})

    def _stage_failed(self, error: Exception) -> None:
        """The stage's own failure: logged with its traceback, reported as fatal; the session takes no more data."""
        session = self.session
        text = f"{type(error).__name__}: {error}"
        log.error("stage %d (%s) failed: %s", session.config.index, session.config.spec.kind, text, exc_info=error)
        session.failure = text[:2000]
        session.notify(Kind.ERROR, {"fatal": True, "error": session.failure, "stage_kind": session.config.spec.kind})

    # -- data path -----------------------------------------------------------------

    def _decode(self, frames: list) -> Message:
        session = self.session
        with session.timeline("transport"):
            message = decode(frames, self.limits)
        session.messages[f"received_{message.kind.name.lower()}"] += 1
        if message.job != session.config.job:
            raise Rejected(f"message for job {message.job!r:.40}, this worker serves {session.config.job!r}")
        if session.failure is not None:
            raise Rejected(f"this stage failed earlier ({session.failure:.200}) and takes no more data")
        session.handled += 1
        return message

    def _on_forward(self, frames: list) -> None:
        message = self._decode(frames)
        if message.kind not in (Kind.FORWARD, Kind.EVAL):
            raise Rejected(f"{message.kind.name} is not accepted on the forward socket")
        session = self.session
        compute = session.compute
        if message.kind is Kind.FORWARD and message.batch in compute.pending:
            raise Rejected(f"batch {message.batch} is already in flight (duplicate or replayed)")
        with session.timeline("transport"):
            x, labels = self._inputs(message)
        if message.kind is Kind.EVAL:
            return self._evaluate(message, x, labels)
        if session.config.is_last:
            result = compute.train_last(x, labels)
            session.check_finite_output("loss", result.loss_sum, message.batch)
            stats = {"loss_sum": result.loss_sum, "correct": result.correct, "count": result.count}
            session.send(session.report, Kind.TRAIN_RESULT, message.batch, stats)
            self._send_upstream(message.batch, result.upstream)
            return
        h = compute.forward(message.batch, x, labels)
        session.send(session.downstream, Kind.FORWARD, message.batch, message.meta, {"x": h, "labels": labels})
        self._send_upstream(message.batch, compute.update_after_forward(message.batch))

    def _evaluate(self, message: Message, x: torch.Tensor, labels: torch.Tensor) -> None:
        session = self.session
        output = session.compute.evaluate(x, labels)
        if not session.config.is_last:
            session.send(session.downstream, Kind.EVAL, message.batch, message.meta, {"x": output, "labels": labels})
            return
        loss = torch.nn.functional.cross_entropy(output, labels, reduction="sum")
        session.check_finite_output("loss", float(loss), message.batch)
        stats = {**message.meta, "loss_sum": float(loss), "correct": int((output.argmax(1) == labels).sum()), "count": len(labels)}
        session.send(session.report, Kind.EVAL_RESULT, message.batch, stats)

    def _inputs(self, message: Message) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's tensors on this stage's device; a refusal here loses the batch, so it names it."""
        config = self.session.config
        x, labels = message.tensors.get("x"), message.tensors.get("labels")
        if x is None or labels is None:
            raise Rejected(f"{message.kind.name} needs tensors 'x' and 'labels', got {sorted(message.tensors)}", message)
        if x.dtype != np.float32 or tuple(x.shape[1:]) != config.input_shape or x.shape[0] == 0:
            raise Rejected(f"x must be float32 (B, {', '.join(map(str, config.input_shape))}), got {x.dtype} {list(x.shape)}", message)
        if labels.dtype != np.int64 or labels.shape != (x.shape[0],):
            raise Rejected(f"labels must be int64 ({x.shape[0]},), got {labels.dtype} {list(labels.shape)}", message)
        if labels.size and not 0 <= labels.min() <= labels.max() < config.num_classes:
            raise Rejected(f"labels must lie in 0..{config.num_classes - 1}", message)
        self._check_finite("x", x, message)
        device = self.session.device
        return to_device(x, device), to_device(labels, device)

    def _on_backward(self, frames: list) -> None:
        message = self._decode(frames)
        if message.kind is not Kind.BACKWARD:
            raise Rejected(f"{message.kind.name} is not accepted on the backward socket")
        session = self.session
        pending = session.compute.pending.get(message.batch)
        if pending is None:
            raise Rejected(f"no batch {message.batch} awaits a target (unknown, late or duplicate)")
        target = message.tensors.get("target")
        expected = (pending.h.shape[0], *((1,) if session.config.mode.synthetic_loss else session.output_shape))
        if target is None or target.dtype != np.float32 or tuple(target.shape) != expected:
            got = "nothing" if target is None else f"{target.dtype} {list(target.shape)}"
            raise Rejected(f"target for batch {message.batch} must be float32 {list(expected)}, got {got}", message)
        self._check_finite("target", target, message)
        with session.timeline("transport"):
            tensor = to_device(target, session.device)
        self._send_upstream(message.batch, session.compute.receive_target(message.batch, tensor))
        if not session.compute.pending:
            self._release_flush_waiters()

    def _check_finite(self, name: str, array: np.ndarray, message: Message) -> None:
        if np.isfinite(array).all():
            return
        if self.session.config.nonfinite == "reject":
            raise Rejected(f"{name} holds NaN or Inf values (policy: reject)", message)
        self.session.messages["nonfinite_accepted"] += 1

    def _send_upstream(self, batch: int, target: Optional[torch.Tensor]) -> None:
        session = self.session
        if target is not None and session.upstream is not None:
            session.send(session.upstream, Kind.BACKWARD, batch, tensors={"target": target})

    # -- control path --------------------------------------------------------------

    def _on_control(self, frames: list) -> None:
        identity, request = frames[0].bytes, frames[1:]
        try:
            message = decode(request, self.limits)
            if self.session is not None and message.job == self.session.config.job:
                self.session.last_heard = time.monotonic()
            if message.kind is Kind.HEARTBEAT:
                return
            if message.kind is not Kind.CONTROL:
                raise Rejected(f"{message.kind.name} is not accepted on the control socket")
            command = message.meta.get("command")
            handler = getattr(self, f"_command_{command}", None) if isinstance(command, str) else None
            if handler is None:
                raise Rejected(f"unknown control command {command!r:.40}")
            reply = handler(identity, message)
        except (DniError, ValueError, TypeError, OSError) as error:
            self.refusals.refuse(type(error).__name__, f"control request: {error}")
            reply = Message(Kind.REPLY, meta={"ok": False, "error": f"{type(error).__name__}: {error}"})
        if reply is not None:
            send_message(self.control, reply, [identity])

    def _command_ping(self, identity: bytes, message: Message) -> Message:
        return Message(Kind.REPLY, meta={"ok": True, "pid": os.getpid(), "endpoints": list(self.endpoints.__dict__.values())})

    def _command_configure(self, identity: bytes, message: Message) -> Message:
        config = StageAssignment.from_wire(message.meta.get("config"))
        if self.session is not None:
            self._end_session(f"reconfigured for job {config.job}", EXIT_STOPPED, keep_serving=True)
        self.session = Session(self.context, config, self.limits, self.refusals, self._while_blocked)
        log.info("stage %d of job %s: %s, output %s", config.index, config.job, config.spec.kind, self.session.output_shape)
        hostname = host.gethostname()
        return Message(Kind.REPLY, meta={
            "ok": True, "pid": os.getpid(), "hostname": hostname, "ip": _ip_of(hostname),
            "output_shape": list(self.session.output_shape), "device": self.session.device,
        })

    def _command_flush(self, identity: bytes, message: Message) -> Optional[Message]:
        """Answered once no batch awaits its target, so the caller knows every update is done."""
        session = self._require_session()
        if session.compute.pending:
            session.flush_waiters.append(identity)
            return None
        return Message(Kind.REPLY, meta={"ok": True})

    def _release_flush_waiters(self) -> None:
        for identity in self.session.flush_waiters:
            send_message(self.control, Message(Kind.REPLY, meta={"ok": True}), [identity])
        self.session.flush_waiters.clear()

    def _command_metrics(self, identity: bytes, message: Message) -> Message:
        session = self._require_session()
        spans = session.timeline.span_arrays() if message.meta.get("spans") else {}
        return Message(Kind.REPLY, meta={"ok": True, "metrics": self.metrics()}, tensors=spans)

    def _command_state(self, identity: bytes, message: Message) -> Message:
        state = self._require_session().compute.state()
        arrays = {name: to_host(tensor) for name, tensor in state.items()}
        return Message(Kind.REPLY, meta={"ok": True}, tensors=arrays)

    def _command_checkpoint(self, identity: bytes, message: Message) -> Message:
        session = self._require_session()
        path = message.meta.get("path")
        if not isinstance(path, str) or not path:
            raise Rejected("checkpoint needs a 'path'")
        if session.compute.pending:
            raise Rejected(f"{len(session.compute.pending)} batches still await targets: flush before a checkpoint")
        save_checkpoint(path, session.compute)
        return Message(Kind.REPLY, meta={"ok": True, "steps": session.compute.steps})

    def _command_stop(self, identity: bytes, message: Message) -> Message:
        self._end_session("the coordinator stopped it", EXIT_STOPPED)
        return Message(Kind.REPLY, meta={"ok": True})

    def _end_session(self, why: str, exit_code: int, keep_serving: bool = False) -> None:
        if self.session is not None:
            level = logging.INFO if exit_code == EXIT_STOPPED else logging.ERROR
            log.log(level, "ending job %s (stage %d): %s", self.session.config.job, self.session.config.index, why)
            self.session.close()
            self.session = None
        if not keep_serving and self.once:
            self.running = False
            self.exit_code = exit_code
            log.info("exiting (--once): %s", why)

    def _require_session(self) -> Session:
        if self.session is None:
            raise Rejected("this worker has no job configured")
        return self.session

    def metrics(self) -> dict[str, Any]:
        session = self.session
        compute = session.compute
        return {
            "stage": session.config.index,
            "steps": compute.steps,
            "wall": session.timeline.wall(),
            "setup_seconds": session.setup_seconds,
            "time": dict(session.timeline.totals),
            "messages": dict(session.messages),
            "errors": dict(self.refusals.counts),
            "staleness": {str(k): v for k, v in sorted(compute.staleness.items())},
            "pending": len(compute.pending),
            "synthesizer_loss": compute.synthesizer_loss,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def _bound_address(socket: zmq.Socket) -> str:
    """Where a socket actually listens (a port asked for as 0 or * is known only after binding)."""
    return socket.getsockopt(zmq.LAST_ENDPOINT).decode()


def _write_ready_file(path: Path, endpoints: Endpoints) -> None:
    """Tell whoever started this worker where it listens; written whole or not at all."""
    write_text_atomically(path, json.dumps({"pid": os.getpid(), **endpoints.__dict__}))


def _ip_of(hostname: str) -> str:
    try:
        return host.gethostbyname(hostname)
    except OSError:
        return "unknown"


def serve(bind: str, once: bool = False, keys: Optional[Keys] = None, ready_file: Optional[str] = None) -> int:
    return Worker(bind, once, keys=keys, ready_file=ready_file).serve()
