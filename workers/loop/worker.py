"""A worker process: serves one stage of one job at a time over ZeroMQ, from one event loop.

The worker binds three sockets from one address (control: ROUTER,
request/reply with the coordinator; forward: PULL, activations and evaluation
batches from upstream; backward: PULL, targets from downstream). Each turn of
its loop asks the schedule (`dni.schedule`) what it may take, polls for
exactly that (and for POLLOUT on any outbox whose peer did not take the last
message, and for a wake-up), handles what arrived, and writes the outboxes.
Handlers only put messages into outboxes, so nothing ever waits inside one: a
stopped job, a silent coordinator or a signal is always seen by the loop.

Bad input is refused and counted while the worker goes on; a stage's own
failure is reported as fatal; a coordinator that falls silent ends its job.
"""
from __future__ import annotations

import json
import logging
import os
import socket as host_socket
import time
from pathlib import Path
from typing import Callable, Optional

import zmq

from dni.errors import ConfigError, DniError, WriteFailed
from dni.files import write_text_atomically
from dni.protocol import (DEFAULT_LIMITS, Endpoints, Kind, Limits, Message, ProtocolError, decode, open_socket,
                          send_message, worker_endpoints)
from dni.protocol.linkdelay import poll_within
from dni.protocol.refusals import RefusalLog
from dni.protocol.security import Keys, check_plaintext_allowed, make_server, secure_context
from dni.spec import StageAssignment
from dni.workers.loop import datapath
from dni.workers.loop.commands import answer
from dni.spec import COORDINATOR_TIMEOUT, EXIT_COORDINATOR_SILENT, EXIT_STOPPED
from dni.workers.loop.session import Session
from dni.workers.loop.validation import Rejected

__all__ = ["Rejected", "Wakeup", "Worker"]

log = logging.getLogger("dni.worker")
POLL_SECONDS = 1.0


class Wakeup:
    """A socket pair the loop polls: any thread, or a signal (`signal.set_wakeup_fd(wakeup.writer)`), ends a wait."""

    def __init__(self) -> None:
        self._reader, self._writer = host_socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    @property
    def fd(self) -> int:
        return self._reader.fileno()

    @property
    def writer(self) -> int:
        return self._writer.fileno()

    def ring(self) -> None:
        try:
            self._writer.send(b"\0")
        except BlockingIOError:  # rung already and not yet heard
            pass

    def drain(self) -> None:
        try:
            while self._reader.recv(256):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


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
        self.stop_reason = "stopped"
        self.wakeup = Wakeup()
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.wakeup.fd, zmq.POLLIN)
        self._polled: dict[zmq.Socket, int] = {}  # data sockets registered now, with their flags
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
                self.turn()
                self.refusals.summarise_due()
            if self.session is not None:
                self.end_session(self.stop_reason, EXIT_STOPPED)
        finally:
            self.close()
        return self.exit_code

    def stop(self, why: str = "stopped") -> None:
        """End serving at the next turn (from a signal handler or another thread alike)."""
        self.stop_reason = why
        self.running = False
        self.wakeup.ring()

    def close(self) -> None:
        if self.session:
            self.session.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)
        self.wakeup.close()

    # -- the loop ------------------------------------------------------------------

    def turn(self) -> None:
        """One turn: poll what the schedule allows, handle what came, write the outboxes."""
        session = self.session
        if session is None:
            events = dict(self.poller.poll(int(POLL_SECONDS * 1000)))
            self._take_control(events)
            return
        now = session.tick = time.monotonic()
        if now - session.last_heard > COORDINATOR_TIMEOUT:
            self.end_session(f"the coordinator has been silent for {now - session.last_heard:.0f}s", EXIT_COORDINATOR_SILENT)
            return
        plan = session.schedule.turn(session.compute.in_flight, session.outboxes.over_bound())
        self._poll_for(self.forward_in, zmq.POLLIN if plan.batches else 0)
        self._poll_for(self.backward_in, zmq.POLLIN)
        for outbox in session.outboxes.all:
            self._poll_for(outbox.socket, zmq.POLLOUT if outbox.wants_write else 0)
        timeout = session.outboxes.timeout(POLL_SECONDS)
        session.timeline.lap("loop")
        events = dict(poll_within(self.poller.poll, timeout))
        session.timeline.lap(plan.waiting.value)
        self._take_control(events)
        if self.session is not session:  # the job was stopped or replaced
            return
        if self.backward_in in events:
            self._take(session, self.backward_in, datapath.on_backward)
        if self.forward_in in events:
            self._take(session, self.forward_in, datapath.on_forward)
        session.write()
        if session.flush_waiters and not session.compute.in_flight:
            self._release_flush_waiters(session)

    def _poll_for(self, socket: zmq.Socket, flags: int) -> None:
        if self._polled.get(socket, 0) != flags:
            if flags:
                self.poller.register(socket, flags)
                self._polled[socket] = flags
            else:
                self.poller.unregister(socket)
                del self._polled[socket]

    def _take_control(self, events: dict) -> None:
        if self.wakeup.fd in events:
            self.wakeup.drain()
        if self.control not in events:
            return
        try:
            frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:  # readable without a message (e.g. a security handshake): nothing to do
            return
        self._guarded(lambda: self._on_control(frames))
        if self.session is not None:
            self.session.timeline.lap("control")

    def _take(self, session: Session, socket: zmq.Socket, handler: Callable[[Session, list], datapath.Steps]) -> None:
        """One data message through its handler, the outboxes written at each of the handler's yields."""
        try:
            frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        session.timeline.lap("receive")

        def steps() -> None:
            for _ in handler(session, frames):
                session.write()
        self._guarded(steps)

    def _guarded(self, work: Callable[[], object]) -> None:
        """Run one piece of the job's work: bad input is refused, anything else is the stage's own failure."""
        try:
            work()
        except (ProtocolError, Rejected, ConfigError) as error:
            self._reject(type(error).__name__, str(error), getattr(error, "lost", None))
        except Exception as error:  # the stage's own code failed (or produced NaN): the run cannot go on
            if self.session is None:  # no stage to fail: a command that could not be carried out
                self._reject(type(error).__name__, str(error))
            else:
                self._stage_failed(self.session, error)

    def _reject(self, category: str, text: str, lost: Optional[Message] = None) -> None:
        """Bad input: counted, logged within limits, and the worker goes on; a lost batch is reported at once."""
        self.refusals.refuse(category, text)
        if lost is not None and self.session is not None:
            self.session.notify(Kind.ERROR, {"category": category, "error": text[:500], "lost_batch": lost.batch,
                                             "from_stage": lost.sender})

    def _stage_failed(self, session: Session, error: Exception) -> None:
        """The stage's own failure: logged with its traceback, reported as fatal; the session takes no more data and sends none."""
        text = f"{type(error).__name__}: {error}"
        log.error("stage %d (%s) failed: %s", session.config.index, session.config.spec.kind, text, exc_info=error)
        session.failure = text[:2000]
        session.outboxes.drop()  # a failed stage sends no more data
        session.notify(Kind.ERROR, {"fatal": True, "error": session.failure, "stage_kind": session.config.spec.kind})

    def _on_control(self, frames: list) -> None:
        identity, request = frames[0].bytes, frames[1:]
        try:
            reply = answer(self, identity, decode(request, self.limits))
        except (DniError, ValueError, TypeError, OSError) as error:
            self.refusals.refuse(type(error).__name__, f"control request: {error}")
            reply = Message(Kind.REPLY, meta={"ok": False, "error": f"{type(error).__name__}: {error}",
                                              **({"write_failed": str(error)} if isinstance(error, WriteFailed) else {})})
        except Exception as error:  # answered, then handled as the failure it is
            send_message(self.control, Message(Kind.REPLY, meta={"ok": False, "error": f"{type(error).__name__}: {error}"}),
                         [identity])
            raise
        if reply is not None:  # a ROUTER never waits to send: a reply to a peer gone is dropped
            send_message(self.control, reply, [identity])

    def _release_flush_waiters(self, session: Session) -> None:
        for identity in session.flush_waiters:
            send_message(self.control, Message(Kind.REPLY, meta={"ok": True}), [identity])
        session.flush_waiters.clear()

    # -- sessions (what the control commands start and end) -------------------------

    def start_session(self, config: StageAssignment) -> Session:
        if self.session is not None:
            self.end_session(f"reconfigured for job {config.job}", EXIT_STOPPED, keep_serving=True)
        self.session = Session.open(self.context, config, self.limits, self.refusals)
        log.info("stage %d of job %s: %s, output %s", config.index, config.job, config.spec.kind, self.session.output_shape)
        return self.session

    def end_session(self, why: str, exit_code: int, keep_serving: bool = False) -> None:
        if self.session is not None:
            level = logging.INFO if exit_code == EXIT_STOPPED else logging.ERROR
            log.log(level, "ending job %s (stage %d): %s", self.session.config.job, self.session.config.index, why)
            for socket in list(self._polled):
                self._poll_for(socket, 0)
            self.session.close()
            self.session = None
        if not keep_serving and self.once:
            self.running = False
            self.exit_code = exit_code
            log.info("exiting (--once): %s", why)


def _bound_address(socket: zmq.Socket) -> str:
    """Where a socket actually listens (a port asked for as 0 or * is known only after binding)."""
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def _write_ready_file(path: Path, endpoints: Endpoints) -> None:
    """Tell whoever started this worker where it listens; written whole or not at all."""
    write_text_atomically(path, json.dumps({"pid": os.getpid(), **endpoints.__dict__}))
