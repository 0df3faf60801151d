"""Every error dni raises on purpose derives from `DniError`, and says what the command line should exit with.

Callers catch one base; `dni`'s CLI turns any of them into its message and
`exit_code` (2: the input was unusable, nothing ran; 1: the run failed; 0: there
was nothing to do). The one exception is `RunInterrupted`: a signal is no error,
so it stays a KeyboardInterrupt (exit code 130).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "DataError", "DniError", "PipelineError", "RunInterrupted", "StageFailed", "WorkerLost", "WriteFailed"]


class DniError(Exception):
    exit_code = 1


class ConfigError(DniError, ValueError):
    """A job, stage or flag setting that cannot be used; the text names the field."""

    exit_code = 2


class DataError(DniError, RuntimeError):
    """The dataset is not where it should be and cannot be fetched."""

    exit_code = 2


class PipelineError(DniError, RuntimeError):
    """A worker refused a request, stopped answering, failed or died: the run cannot go on."""


class StageFailed(PipelineError):
    """A stage's own code failed, produced NaN/Inf, or lost a batch: the run cannot go on."""

    def __init__(self, stage: int, text: str) -> None:
        super().__init__(text)
        self.stage = stage


class WorkerLost(StageFailed):
    """A stage's worker is gone (its process died, its connection dropped, it fell silent): a new worker
    for the stage can take over from the last checkpoint."""


class WriteFailed(DniError, OSError):
    """A file could not be written (a full disk, no permission): the text names the file and the reason, and no part
    of it is left behind. An OSError too, so code that guards writes with `except OSError` still catches it."""

    def __init__(self, target: object, error: OSError) -> None:
        reason = (error.strerror or str(error)).lower() if isinstance(error, OSError) else str(error)
        super().__init__(f"{reason} writing {target}")
        self.errno = error.errno


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM once its folder existed, saying what its user needs next: the folder and
    where --resume starts (`unit` is "step", or "batch" for a sequence job). A KeyboardInterrupt still, not a
    DniError: an interrupt is the user's own doing, and code that catches KeyboardInterrupt keeps catching it."""

    def __init__(self, folder: Path, resume_from: int, unit: str = "step") -> None:
        super().__init__(f"interrupted; --resume {folder} continues from {unit} {resume_from}")
        self.folder = folder
        self.resume_from = resume_from
        self.unit = unit
