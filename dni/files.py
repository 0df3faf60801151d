"""Files written whole or not at all: a crash mid-write leaves the previous version, never half of a new one.

A write that fails (a full disk, a folder without permission) removes what it
had written and raises `WriteFailed`, whose text names the file and the reason
("no space left on device writing runs/…/stage0.pt"), not the library that
happened to be writing.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from dni.errors import WriteFailed

__all__ = ["replace_atomically", "save_atomically", "write_text_atomically", "writing"]


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """An OSError inside becomes WriteFailed naming `target`."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as error:
        raise WriteFailed(target, error) from error


def replace_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a sibling file, which is then renamed over `target` (a rename is atomic on one file system);
    if either fails, the sibling is removed and WriteFailed raised."""
    partial = target.with_name(target.name + ".partial")
    with writing(target):
        try:
            write(partial)
            os.replace(partial, target)
        except BaseException:
            _remove(partial)
            raise


def write_text_atomically(target: Path, text: str) -> None:
    replace_atomically(target, lambda partial: partial.write_text(text))


def save_atomically(target: Path, state: Any) -> None:
    """`torch.save`, serialised in memory first and then written as one Python write: a full disk then raises
    OSError(ENOSPC), where torch's own writer reports a short write as "unexpected pos"."""
    import torch  # here: the rest of this module is for processes that need no torch

    serialised = io.BytesIO()
    torch.save(state, serialised)
    replace_atomically(target, lambda partial: partial.write_bytes(serialised.getbuffer()))


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the folder itself is not writable: nothing was written there either
        pass
