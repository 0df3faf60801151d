"""A worker's pulse: sent from a thread of its own, so a long computation does not look like a death.

Each beat also says how long the main loop has been inside one iteration, so
the coordinator can tell a worker that hangs from one that is merely busy.
"""
from __future__ import annotations

import threading
from typing import Callable

import zmq

from protocol import Kind, Limits, Message, open_socket, send_message

BEAT_SECONDS = 1.0


class Heartbeat(threading.Thread):
    def __init__(self, context: zmq.Context, address: str, limits: Limits, job: str, stage: int,
                 progress: Callable[[], tuple[int, float]]) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.context, self.address, self.limits = context, address, limits
        self.job, self.stage, self.progress = job, stage, progress
        self.stopping = threading.Event()

    def run(self) -> None:
        socket = open_socket(self.context, zmq.PUSH, self.limits)
        socket.connect(self.address)
        try:
            while not self.stopping.wait(BEAT_SECONDS):
                steps, busy_for = self.progress()
                beat = Message(Kind.HEARTBEAT, self.job, -1, steps, self.stage, {"busy_for": busy_for})
                try:
                    send_message(socket, beat, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the coordinator is not reading; its own timeout will tell
        finally:
            socket.close(linger=0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
