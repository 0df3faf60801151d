"""What the end-to-end tests ask of runs they start: an action once a run has checkpointed."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

__all__ = ["when_checkpointed"]


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
