"""SIGINT and SIGTERM as events of the coordinator's loop, so a stop always ends in a checkpoint.

Ctrl-C, `timeout`, batch schedulers and container runtimes stop a run with
SIGINT or SIGTERM, often to the whole process group. Local workers leave both
to their coordinator (`dni worker --child`); here the first one is only noted and rings the loop's wake-up socket; the loop raises
KeyboardInterrupt at its next turn (`check`), between messages, where the
trainer writes its interrupt checkpoint with every worker still there. A
second signal stops at once, checkpoint or not.

Outside training (`deferring` not entered) a signal interrupts at once, as
Python's default does; once training is over (`finish`) it is ignored while
the results are written. Installed only by the command line, in the main thread:
a program that calls `dni.run_job` keeps its own signal handling.
"""
from __future__ import annotations

import signal
import socket
from contextlib import contextmanager
from types import FrameType
from typing import Iterator, Optional

__all__ = ["INTERRUPTS", "Interrupts"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    def __init__(self) -> None:
        self.installed = False
        self.deferred = False
        self.received: Optional[int] = None  # the signal noted and not yet raised
        self.raised = False
        self.finished = False
        self._reader: Optional[socket.socket] = None
        self._writer: Optional[socket.socket] = None

    def install(self) -> None:
        """Take over SIGINT and SIGTERM in this (main) thread, with a wake-up socket for the loop's poll."""
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for number in SIGNALS:
            signal.signal(number, self._on_signal)
        self.installed = True

    @property
    def fd(self) -> Optional[int]:
        """A file descriptor the loop polls: readable once a signal arrived (None: not installed)."""
        return self._reader.fileno() if self._reader is not None else None

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.finished:
            return
        if not self.deferred or self.received is not None or self.raised:
            raise KeyboardInterrupt  # outside training, or a second signal: at once
        self.received = signum

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """While inside, a first signal waits for the loop's `check`."""
        self.deferred, self.received, self.raised = True, None, False
        try:
            yield
        finally:
            self.deferred = False

    def finish(self) -> None:
        """Training is over: from now on a signal must not turn a finished run into a failed one (its results are
        being written, which takes moments)."""
        self.finished = True

    def check(self) -> None:
        """Raise KeyboardInterrupt once for a signal noted since the last check (called by the loop each turn)."""
        if self._reader is not None:
            try:
                while self._reader.recv(64):
                    pass
            except BlockingIOError:
                pass
        if self.received is not None and not self.raised:
            self.raised = True
            raise KeyboardInterrupt(signal.Signals(self.received).name)


INTERRUPTS = Interrupts()  # one per process: signal handlers are
