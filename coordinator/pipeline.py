"""The coordinator's side of the wire: configure workers, feed batches, collect results.

One DEALER per worker carries control requests (each answered by a REPLY); one
PUSH feeds the first stage's forward socket; one PULL inbox receives training
and evaluation results, heartbeats and error reports from every worker.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import zmq

from protocol import DEFAULT_LIMITS, Kind, Limits, Message, ProtocolError, open_socket, receive_message, send_message, worker_endpoints
from protocol.security import Keys, check_plaintext_allowed, make_server, secure_context

log = logging.getLogger("dni.pipeline")


class PipelineError(RuntimeError):
    """A worker refused a request, stopped answering, or died."""


class Pipeline:
    def __init__(self, job_id: str, addresses: list[str], inbox_bind: str,
                 health_check: Callable[[], None] = lambda: None, limits: Limits = DEFAULT_LIMITS,
                 heartbeat_timeout: float = 10.0, hang_timeout: float = 300.0, keys: Optional[Keys] = None) -> None:
        self.job_id = job_id
        self.addresses = addresses
        self.limits = limits
        self.health_check = health_check
        self.heartbeat_timeout = heartbeat_timeout
        self.hang_timeout = hang_timeout
        self.last_beat = 0.0
        if keys is None:  # plaintext only where no socket reaches beyond this machine
            check_plaintext_allowed([inbox_bind, *addresses], "coordinator address")
        self.context = zmq.Context()
        # with keys, the inbox is a CURVE server and every other socket of this context a CURVE client
        self.authenticator = secure_context(self.context, keys) if keys is not None else None
        self.inbox = open_socket(self.context, zmq.PULL, limits)
        if keys is not None:
            make_server(self.inbox, keys)
        self.inbox.bind(inbox_bind)
        self.inbox_address = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.controls = [self._connect(zmq.DEALER, worker_endpoints(address).control) for address in addresses]
        self.feed = self._connect(zmq.PUSH, worker_endpoints(addresses[0]).forward)
        self.last_seen = [time.monotonic()] * len(addresses)
        self.busy_for = [0.0] * len(addresses)
        self.worker_errors: list[int] = [0] * len(addresses)

    def _connect(self, kind: int, address: str) -> zmq.Socket:
        socket = open_socket(self.context, kind, self.limits)
        socket.connect(address)
        return socket

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)

    # -- control -------------------------------------------------------------------

    def request(self, stage: int, command: str, meta: Optional[dict[str, Any]] = None, timeout: float = 60.0) -> Message:
        """Send a control command to one worker and wait for its reply, watching the workers' health meanwhile."""
        socket = self.controls[stage]
        send_message(socket, Message(Kind.CONTROL, self.job_id, meta={"command": command, **(meta or {})}))
        deadline = time.monotonic() + timeout
        while not socket.poll(200):
            self.health_check()
            self._beat()
            if time.monotonic() > deadline:
                raise PipelineError(f"stage {stage} ({self.addresses[stage]}) did not answer {command!r} within {timeout:.0f}s")
        reply = receive_message(socket, self.limits)
        if not reply.meta.get("ok"):
            raise PipelineError(f"stage {stage} refused {command!r}: {reply.meta.get('error')}")
        self.last_seen[stage] = time.monotonic()
        return reply

    def request_all(self, command: str, meta: Optional[dict[str, Any]] = None, timeout: float = 60.0) -> list[Message]:
        return [self.request(stage, command, meta, timeout) for stage in range(len(self.addresses))]

    def wait_for_workers(self, timeout: float) -> None:
        for stage in range(len(self.addresses)):
            try:
                self.request(stage, "ping", timeout=timeout)
            except PipelineError as error:
                if "did not answer" not in str(error):
                    raise
                hint = ("this coordinator uses CURVE keys: the worker needs --keys with a copy of the same key directory"
                        if self.authenticator is not None else
                        "if the worker runs with --keys, this coordinator needs --keys with a copy of the same directory")
                raise PipelineError(f"{error} ({hint})") from error

    # -- data ----------------------------------------------------------------------

    def send_batch(self, kind: Kind, batch: int, x: torch.Tensor, labels: torch.Tensor, meta: Optional[dict[str, Any]] = None) -> None:
        tensors = {"x": np.ascontiguousarray(x.numpy()), "labels": np.ascontiguousarray(labels.numpy())}
        send_message(self.feed, Message(kind, self.job_id, batch, batch, -1, meta or {}, tensors))

    def receive(self, timeout: float) -> Optional[Message]:
        """The next result from the inbox, or None after `timeout` seconds; heartbeats and errors are handled here."""
        deadline = time.monotonic() + timeout
        while True:
            self.health_check()
            self._beat()
            remaining = deadline - time.monotonic()
            if not self.inbox.poll(max(0, min(remaining, 0.5)) * 1000):
                self._check_heartbeats()  # judged only on an empty inbox: beats may wait there while we were busy
                if remaining <= 0:
                    return None
                continue
            message = self._read_inbox()
            if message is not None:
                return message

    def _read_inbox(self) -> Optional[Message]:
        try:
            message = receive_message(self.inbox, self.limits)
        except ProtocolError as error:
            log.warning("ignored a malformed message on the inbox: %s", error)
            return None
        if message.job != self.job_id or not 0 <= message.sender < len(self.addresses):
            log.warning("ignored a message from job %r stage %d", message.job, message.sender)
            return None
        self.last_seen[message.sender] = time.monotonic()
        if message.kind is Kind.HEARTBEAT:
            self.busy_for[message.sender] = float(message.meta.get("busy_for", 0.0))
            return None
        if message.kind is Kind.ERROR:
            self.worker_errors[message.sender] += 1
            log.warning("stage %d rejected a message: %s", message.sender, message.meta.get("error"))
            return None
        return message

    def forget_silence(self) -> None:
        """Start the liveness clocks afresh (after workers were restarted)."""
        self.last_seen = [time.monotonic()] * len(self.addresses)
        self.busy_for = [0.0] * len(self.addresses)

    def _beat(self) -> None:
        """Tell every worker the coordinator lives; a worker that stops hearing this ends its job."""
        now = time.monotonic()
        if now - self.last_beat < 1.0:
            return
        self.last_beat = now
        beat = Message(Kind.HEARTBEAT, self.job_id)
        for socket in self.controls:
            try:
                send_message(socket, beat, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for stage, seen in enumerate(self.last_seen):
            if now - seen > self.heartbeat_timeout:
                raise PipelineError(f"stage {stage} ({self.addresses[stage]}) sent nothing for {now - seen:.0f}s: died or unreachable")
            if self.busy_for[stage] > self.hang_timeout:
                raise PipelineError(f"stage {stage} ({self.addresses[stage]}) has been stuck in one step for {self.busy_for[stage]:.0f}s")
