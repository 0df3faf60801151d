"""Every error dni raises on purpose derives from `DniError`, and says what the command line should exit with.

Callers catch one base; `dni`'s CLI turns any of them into its message and
`exit_code` (2: the input was unusable, nothing ran; 1: the run failed; 0: there
was nothing to do).
"""
from __future__ import annotations

__all__ = ["ConfigError", "DataError", "DniError", "PipelineError", "WriteFailed"]


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


class WriteFailed(DniError, OSError):
    """A file could not be written (a full disk, no permission): the text names the file and the reason, and no part
    of it is left behind. An OSError too, so code that guards writes with `except OSError` still catches it."""

    def __init__(self, target: object, error: OSError) -> None:
        reason = (error.strerror or str(error)).lower() if isinstance(error, OSError) else str(error)
        super().__init__(f"{reason} writing {target}")
        self.errno = error.errno
