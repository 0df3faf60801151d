"""Local worker processes: start one per stage, watch them, and leave none behind.

Over tcp each worker binds ports the system picks and reports them in a ready
file, so no port is chosen free here and taken by someone else before the
worker binds it. A lost worker that still runs (frozen, or cut off) is killed
before its replacement starts, never merely waited for. The socket folder of a
coordinator that was killed is removed by the next one.
"""
from __future__ import annotations

import json
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from dni.errors import WorkerLost
from dni.lifetime import abandoned_by, claim, die_with_parent
from dni.protocol import Endpoints, worker_endpoints
from dni.spec import COORDINATOR_TIMEOUT, EXIT_COORDINATOR_SILENT, EXIT_STOPPED

__all__ = ["EXIT_MEANINGS", "KILL_GRACE", "LocalWorkers", "WorkerDied", "remove_abandoned_socket_folders"]

log = logging.getLogger("dni.launcher")
READY_SECONDS = 120.0
KILL_GRACE = 1.0  # seconds a lost worker that still runs gets to exit by itself before SIGKILL
SOCKET_FOLDERS = "dni-*"
EXIT_MEANINGS = {  # a --once worker's exit code -> what happened
    EXIT_STOPPED: "exited: it was told to stop",
    EXIT_COORDINATOR_SILENT: f"ended its job: it heard nothing from this coordinator for {COORDINATOR_TIMEOUT:.0f} s",
}


class WorkerDied(WorkerLost):
    """A local worker process exited while the job was running."""


class LocalWorkers:
    """Worker processes on this machine, one per stage, talking over ipc:// (or tcp:// on loopback); a pool
    (coordinator/pools/pool.py) whose dead workers are seen at once and replaced by new processes.

    With `once=False` they outlive their jobs, and a benchmark runs job after job on the same processes
    (`run_job(..., pool=workers)`, which then neither starts nor stops them), paying their start-up once."""

    host = "127.0.0.1"
    start_seconds = 60.0
    rejoin_seconds = 60.0
    spawns = True
    builds_here = True

    def __init__(self, count: int, transport: str = "ipc", log_level: str = "WARNING", keys: Optional[Path] = None,
                 once: bool = True, inbox: Optional[str] = None) -> None:
        self.keys = keys  # a CURVE key directory the workers load (see protocol/security.py)
        self.once = once  # each worker serves one job, then exits; else it serves job after job until stopped
        self.directory = Path(tempfile.gettempdir()) / f"dni-{secrets.token_hex(6)}"  # made by start, removed by stop
        self.transport = transport
        self.inbox = inbox or (f"ipc://{self.directory}/coordinator" if transport == "ipc" else "tcp://127.0.0.1:*")
        self.log_level = log_level
        self.processes: list[subprocess.Popen] = []
        self.reported: set[int] = set()  # pids of exited workers that `check` has reported
        self.endpoints: list[Endpoints] = []
        self.count = count

    def _bind_address(self, stage: int) -> str:
        return f"ipc://{self.directory}/stage{stage}" if self.transport == "ipc" else "tcp://127.0.0.1:0"

    def start(self) -> None:
        remove_abandoned_socket_folders(self.directory.parent)
        self.directory.mkdir(mode=0o700)
        claim(self.directory)
        self.processes = [self._spawn(stage) for stage in range(self.count)]
        log.info("started %d workers: %s", len(self.processes), ", ".join(str(p.pid) for p in self.processes))
        self.endpoints = [self._wait_ready(stage) for stage in range(self.count)]

    def _ready_file(self, stage: int) -> Path:
        return self.directory / f"stage{stage}.ready"

    def _spawn(self, stage: int) -> subprocess.Popen:
        self._ready_file(stage).unlink(missing_ok=True)
        command = [sys.executable, "-m", "dni.workers", "--bind", self._bind_address(stage), *(["--once"] if self.once else []),
                   "--ready-file", str(self._ready_file(stage)), "--log-level", self.log_level, "--child"]
        if self.keys is not None:
            command += ["--keys", str(self.keys)]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_leave_signals_and_die_with_parent)

    def _wait_ready(self, stage: int, keep_alive: Callable[[], None] = lambda: None) -> Endpoints:
        """The addresses a worker reports once it listens (ipc ones are known in advance); `keep_alive` is called
        meanwhile (the coordinator's beat, which the other workers wait for)."""
        deadline = time.monotonic() + READY_SECONDS
        while not self._ready_file(stage).is_file():
            self.check()
            keep_alive()
            if time.monotonic() > deadline:
                raise WorkerDied(stage, f"worker for stage {stage} (pid {self.processes[stage].pid}) "
                                        f"did not start listening within {READY_SECONDS:.0f}s")
            time.sleep(0.02)
        if self.transport == "ipc":
            return worker_endpoints(self._bind_address(stage))
        report = json.loads(self._ready_file(stage).read_text())
        return Endpoints(report["control"], report["forward"], report["backward"])

    def replace(self, loss: WorkerLost, keep_alive: Callable[[], None] = lambda: None) -> Endpoints:
        return self.restart(loss.stage, keep_alive)

    def restart(self, stage: int, keep_alive: Callable[[], None] = lambda: None) -> Endpoints:
        """A fresh process for a stage whose worker was lost, the old one killed if it still runs; where it listens."""
        _end(self.processes[stage], KILL_GRACE)
        self.processes[stage] = self._spawn(stage)
        self.endpoints[stage] = self._wait_ready(stage, keep_alive)
        log.warning("restarted the worker of stage %d as pid %d", stage, self.processes[stage].pid)
        return self.endpoints[stage]

    def check(self) -> None:
        """Raise WorkerDied for a worker that exited, once for each: a death reported is being dealt with."""
        for stage, process in enumerate(self.processes):
            code = process.poll()
            if code is not None and process.pid not in self.reported:
                self.reported.add(process.pid)
                how = EXIT_MEANINGS.get(code) or (f"was killed by signal {-code}" if code < 0 else f"died with exit code {code}")
                raise WorkerDied(stage, f"the worker of stage {stage} (pid {process.pid}) {how}")

    def stop(self, grace: float = 5.0) -> None:
        """Wait briefly for workers that were told to stop, then kill what is left."""
        for sig, wait in ((None, grace), (signal.SIGKILL, 2.0)):  # a --child worker ignores SIGTERM
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
        if self.directory.is_dir():
            for leftover in self.directory.glob("*"):
                leftover.unlink(missing_ok=True)
            self.directory.rmdir()

    def __enter__(self) -> "LocalWorkers":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end(process: subprocess.Popen, grace: float) -> None:
    """`process` gone: given `grace` seconds to exit, then SIGKILL (which a stopped process obeys too)."""
    try:
        process.wait(grace)
        return
    except subprocess.TimeoutExpired:
        pass
    log.warning("killing the lost worker (pid %d): it still runs", process.pid)
    process.kill()
    process.wait()


def remove_abandoned_socket_folders(parent: Path) -> None:
    """The socket folders under `parent` of coordinators that were killed (whose workers died with them)."""
    for folder in parent.glob(SOCKET_FOLDERS):
        owner = abandoned_by(folder)
        if owner is not None:
            log.info("removing %s, left by a coordinator that is gone (pid %d)", folder, owner)
            shutil.rmtree(folder, ignore_errors=True)


def _leave_signals_and_die_with_parent() -> None:
    """In the child before exec: SIGINT and SIGTERM are the coordinator's, which checkpoints and then stops its workers
    (the worker's --child keeps them ignored); the child dies with the coordinator, even one killed by SIGKILL."""
    die_with_parent(leave_signals=True)
