"""What the end-to-end tests ask of runs they start: `dni run` as a user runs it, an action once a run has
checkpointed."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from dni.lifetime import children

__all__ = ["at_first_checkpoint", "interrupt", "run_cli", "when_checkpointed"]


def when_checkpointed(results: Path, action: Callable[[], None], running: Callable[[], bool] = lambda: True,
                      timeout: float = 120.0) -> threading.Thread:
    """Run `action` once the first periodic checkpoint of a run under `results` is committed, unless the run
    stops (`running`) or `timeout` passes first."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while running() and time.monotonic() < deadline:
            if list(results.glob("*/checkpoints/coordinator.json")):
                action()
                return
            time.sleep(0.05)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def at_first_checkpoint(monkeypatch, action: Callable[[], None]) -> None:
    """Run `action` in this process the moment a run's first periodic checkpoint is committed (a Ctrl-C, a killed
    worker). Called from the commit itself rather than from a watching thread: a small job runs 300 steps in half a
    second on an idle machine, faster than a thread that polls for the file can be sure to act within the run."""
    from dni.coordinator.train.checkpoints import Checkpoints

    commit = Checkpoints.record
    done: list[bool] = []

    def record_then_act(self: Checkpoints, position) -> None:  # type: ignore[no-untyped-def]
        commit(self, position)
        if not done:
            done.append(True)
            action()

    monkeypatch.setattr(Checkpoints, "record", record_then_act)


def interrupt() -> None:
    """What Ctrl-C does to the coordinator's loop (`at_first_checkpoint(monkeypatch, interrupt)`)."""
    raise KeyboardInterrupt


def run_cli(*arguments: str) -> tuple[subprocess.CompletedProcess, set[int], float]:
    """`dni run ...` as a user runs it: (its result, the worker pids it started, seconds it took). Only worker
    processes count: `import torch` runs `ldconfig -p` (torch.cuda's library lookup), a child of any run."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "dni", "run", *arguments, "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    while process.poll() is None:
        workers |= {pid for pid, command in children(process.pid).items() if "-m dni.workers" in command}
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), workers, time.monotonic() - started
