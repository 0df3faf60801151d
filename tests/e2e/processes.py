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

__all__ = ["run_cli", "when_checkpointed"]


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


def run_cli(*arguments: str) -> tuple[subprocess.CompletedProcess, set[int], float]:
    """`dni run ...` as a user runs it: (its result, the worker pids it started, seconds it took)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "dni", "run", *arguments, "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    while process.poll() is None:
        workers |= set(children(process.pid))
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), workers, time.monotonic() - started
