"""A worker process: serves one stage of one job at a time over ZeroMQ.

This module is the process's skeleton: it binds three sockets from one
address (control: ROUTER, request/reply with the coordinator; forward: PULL,
activations and evaluation batches from upstream; backward: PULL, targets from
downstream), polls them, and dispatches what arrives. Everything else lives in
a module of its own: which sockets to poll (`polling`), one configured job
(`session`), what a data message does (`datapath`) and how it is checked
(`validation`), the control commands (`commands`), the arithmetic
(`compute`). Here is what ties them together: bad input is refused and
counted while the worker goes on, a stage's own failure is reported as fatal,
a coordinator that falls silent ends its job, and a send that waits still
answers control.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Optional

import zmq

from dni.errors import ConfigError, DniError
from dni.files import write_text_atomically
from dni.protocol import (DEFAULT_LIMITS, Endpoints, Kind, Limits, Message, ProtocolError, decode, open_socket,
                          receive_frames, send_message, worker_endpoints)
from dni.protocol.refusals import RefusalLog
from dni.protocol.security import Keys, check_plaintext_allowed, make_server, secure_context
from dni.spec import StageAssignment
from dni.workers import datapath
from dni.workers.commands import answer
from dni.workers.polling import sockets_to_poll
from dni.workers.session import (COORDINATOR_TIMEOUT, EXIT_COORDINATOR_SILENT, EXIT_STOPPED, NonFiniteOutput, Session,
                                 SessionEnded)
from dni.workers.validation import Rejected

__all__ = ["EXIT_COORDINATOR_SILENT", "EXIT_STOPPED", "NonFiniteOutput", "Rejected", "Worker", "serve"]

log = logging.getLogger("dni.worker")
POLL_SECONDS = 1.0


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
            if self._coordinator_silent(session):
                return
        plan = sockets_to_poll(session is not None, session is not None and session.compute.can_take_batch())
        poller = zmq.Poller()
        for socket, wanted in ((self.control, plan.control), (self.forward_in, plan.forward), (self.backward_in, plan.backward)):
            if wanted:
                poller.register(socket, zmq.POLLIN)
        with session.timeline(plan.waiting) if session is not None and plan.waiting else nullcontext():
            ready = dict(poller.poll(POLL_SECONDS * 1000))
        if self.control in ready:
            self._handle(self.control, self._on_control, "control")
        if self.session is not None and self.backward_in in ready:
            self._handle(self.backward_in, self._on_backward)
        if self.session is not None and self.forward_in in ready:
            self._handle(self.forward_in, self._on_forward)

    def _coordinator_silent(self, session: Session, while_doing: str = "") -> bool:
        """End the job when its coordinator has been silent too long (a --once worker then exits with code 3)."""
        silence = session.silence()
        if silence <= COORDINATOR_TIMEOUT:
            return False
        self.end_session(f"the coordinator has been silent for {silence:.0f}s{while_doing}", EXIT_COORDINATOR_SILENT)
        return True

    def _timed(self, activity: str) -> ContextManager[None]:
        return self.session.timeline(activity) if self.session is not None else nullcontext()

    def _handle(self, socket: zmq.Socket, handler: Callable[[list], None], activity: Optional[str] = None) -> None:
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
        if session is not None:
            self._coordinator_silent(session, " while this stage waited to send")
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

    # -- the three sockets ---------------------------------------------------------

    def _on_forward(self, frames: list) -> None:
        datapath.on_forward(self.session, frames)

    def _on_backward(self, frames: list) -> None:
        if datapath.on_backward(self.session, frames):
            self._release_flush_waiters()

    def _on_control(self, frames: list) -> None:
        identity, request = frames[0].bytes, frames[1:]
        try:
            reply = answer(self, identity, decode(request, self.limits))
        except (DniError, ValueError, TypeError, OSError) as error:
            self.refusals.refuse(type(error).__name__, f"control request: {error}")
            reply = Message(Kind.REPLY, meta={"ok": False, "error": f"{type(error).__name__}: {error}"})
        if reply is not None:
            send_message(self.control, reply, [identity])

    def _release_flush_waiters(self) -> None:
        for identity in self.session.flush_waiters:
            send_message(self.control, Message(Kind.REPLY, meta={"ok": True}), [identity])
        self.session.flush_waiters.clear()

    # -- sessions (what the control commands start and end) -------------------------

    def start_session(self, config: StageAssignment) -> Session:
        if self.session is not None:
            self.end_session(f"reconfigured for job {config.job}", EXIT_STOPPED, keep_serving=True)
        self.session = Session(self.context, config, self.limits, self.refusals, self._while_blocked)
        log.info("stage %d of job %s: %s, output %s", config.index, config.job, config.spec.kind, self.session.output_shape)
        return self.session

    def end_session(self, why: str, exit_code: int, keep_serving: bool = False) -> None:
        if self.session is not None:
            level = logging.INFO if exit_code == EXIT_STOPPED else logging.ERROR
            log.log(level, "ending job %s (stage %d): %s", self.session.config.job, self.session.config.index, why)
            self.session.close()
            self.session = None
        if not keep_serving and self.once:
            self.running = False
            self.exit_code = exit_code
            log.info("exiting (--once): %s", why)


def _bound_address(socket: zmq.Socket) -> str:
    """Where a socket actually listens (a port asked for as 0 or * is known only after binding)."""
    return socket.getsockopt(zmq.LAST_ENDPOINT).decode()


def _write_ready_file(path: Path, endpoints: Endpoints) -> None:
    """Tell whoever started this worker where it listens; written whole or not at all."""
    write_text_atomically(path, json.dumps({"pid": os.getpid(), **endpoints.__dict__}))


def serve(bind: str, once: bool = False, keys: Optional[Keys] = None, ready_file: Optional[str] = None) -> int:
    return Worker(bind, once, keys=keys, ready_file=ready_file).serve()
