"""A worker's pulse: sent from a thread of its own, so a long computation does not look like a death.

Each beat carries the stage's status: how long the main loop has been inside
one iteration (so the coordinator can tell a worker that hangs from one that is
merely busy), how many messages it has taken in and refused, and whether the
stage has failed, which reaches the coordinator within a beat even if the
failure report itself was dropped.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import zmq

from dni.protocol import Kind, Limits, Message, open_socket, resolved, send_message

__all__ = ["BEAT_SECONDS", "Heartbeat"]

BEAT_SECONDS = 1.0


class Heartbeat(threading.Thread):
    def __init__(self, context: zmq.Context, address: str, limits: Limits, job: str, stage: int,
                 status: Callable[[], dict[str, Any]]) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.context, self.address, self.limits = context, address, limits
        self.job, self.stage, self.status = job, stage, status
        self.stopping = threading.Event()

    def run(self) -> None:
        socket = open_socket(self.context, zmq.PUSH, self.limits)
        socket.connect(resolved(self.address))
        try:
            while not self.stopping.wait(BEAT_SECONDS):
                status = self.status()
                beat = Message(Kind.HEARTBEAT, self.job, -1, status["steps"], self.stage, status)
                try:
                    send_message(socket, beat, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the coordinator is not reading; its own timeout will tell
        finally:
            socket.close(linger=0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
