"""Files written whole or not at all: a crash mid-write leaves the previous version, never half of a new one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["replace_atomically", "write_text_atomically"]


def replace_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a sibling file, which is then renamed over `target` (a rename is atomic on one file system)."""
    partial = target.with_name(target.name + ".partial")
    write(partial)
    os.replace(partial, target)


def write_text_atomically(target: Path, text: str) -> None:
    replace_atomically(target, lambda partial: partial.write_text(text))
