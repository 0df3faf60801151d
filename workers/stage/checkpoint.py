"""A stage's checkpoint: what the stage says it holds (module, synthesizer, both optimisers, counters).

Written to a temporary file and renamed, so a crash never leaves half a
checkpoint, and a write that fails leaves none; read with `weights_only`, so a checkpoint cannot run code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dni.files import save_atomically, writing

__all__ = ["Checkpointed", "load_checkpoint", "save_checkpoint"]


class Checkpointed(Protocol):
    """A stage that says what its checkpoint holds (`StageCompute`, a sequence job's stages)."""
    module: nn.Module

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_checkpoint(self, state: dict[str, Any]) -> None: ...


def save_checkpoint(path: str, compute: Checkpointed) -> None:
    """Raises WriteFailed (a full disk, no permission), with no partial file left."""
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(target, compute.checkpoint_state())


def load_checkpoint(path: str, compute: Checkpointed) -> None:
    compute.restore_checkpoint(torch.load(path, map_location=next(compute.module.parameters()).device, weights_only=True))
