"""Local worker processes: start one per stage, watch them, and leave none behind."""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger("dni.launcher")


class WorkerDied(RuntimeError):
    """A local worker process exited while the job was running."""

    def __init__(self, stage: int, text: str) -> None:
        super().__init__(text)
        self.stage = stage


class LocalWorkers:
    """Worker processes on this machine, one per stage, talking over ipc:// (or tcp:// on loopback)."""

    def __init__(self, count: int, transport: str = "ipc", log_level: str = "WARNING", keys: Optional[Path] = None) -> None:
        self.keys = keys  # a CURVE key directory the workers load (see protocol/security.py)
        self.directory = Path(tempfile.mkdtemp(prefix="dni-"))
        self.addresses = [self._address(transport, stage) for stage in range(count)]
        self.log_level = log_level
        self.processes: list[subprocess.Popen] = []

    def _address(self, transport: str, stage: int) -> str:
        if transport == "ipc":
            return f"ipc://{self.directory}/stage{stage}"
        port = free_port_block()
        return f"tcp://127.0.0.1:{port}"

    def start(self) -> None:
        self.processes = [self._spawn(address) for address in self.addresses]
        log.info("started %d workers: %s", len(self.processes), ", ".join(str(p.pid) for p in self.processes))

    def _spawn(self, address: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "workers", "--bind", address, "--once", "--log-level", self.log_level]
        if self.keys is not None:
            command += ["--keys", str(self.keys)]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def restart(self, stage: int) -> None:
        """A fresh process for a stage whose worker died, at the same address."""
        self.processes[stage].wait(5)
        self.processes[stage] = self._spawn(self.addresses[stage])
        log.warning("restarted the worker of stage %d as pid %d", stage, self.processes[stage].pid)

    def check(self) -> None:
        for stage, process in enumerate(self.processes):
            code = process.poll()
            if code is not None:
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                raise WorkerDied(stage, f"worker for stage {stage} (pid {process.pid}) died with {how}")

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self, grace: float = 5.0) -> None:
        """Wait briefly for workers that were told to stop, then terminate, then kill what is left."""
        for sig, wait in ((None, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            alive = [process for process in self.processes if process.poll() is None]
            if not alive:
                break
            for process in alive:
                if sig is not None:
                    process.send_signal(sig)
            for process in alive:
                try:
                    process.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
        for leftover in self.directory.glob("*"):
            leftover.unlink(missing_ok=True)
        self.directory.rmdir()

    def __enter__(self) -> "LocalWorkers":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: leave Ctrl-C to the coordinator, which checkpoints and then stops its
    workers; and ask Linux to SIGTERM the child if the coordinator dies, even by SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port_block(size: int = 3) -> int:
    """A base port P such that P..P+size-1 are free on loopback now."""
    import socket

    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size < 65535 and all(_port_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError("no block of free ports on loopback")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
