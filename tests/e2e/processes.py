"""What the end-to-end tests ask of processes they start: children, liveness, an action once a run has checkpointed."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

__all__ = ["alive", "children", "when_checkpointed"]


def children(pid: int) -> dict[int, str]:
    """Processes whose parent is `pid`, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


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
