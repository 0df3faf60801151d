"""A stage's checkpoint: module, synthesizer, both optimisers and counters.

Written to a temporary file and renamed, so a crash never leaves half a
checkpoint; read with `weights_only`, so a checkpoint cannot run code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dni.files import replace_atomically

from dni.workers.compute import StageCompute

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str, compute: StageCompute) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "module": compute.module.state_dict(),
        "module_optimizer": compute.module_optimizer.state_dict(),
        "steps": compute.steps,
    }
    if compute.synthesizer is not None and compute.synthesizer_optimizer is not None:  # one comes with the other
        state["synthesizer"] = compute.synthesizer.state_dict()
        state["synthesizer_optimizer"] = compute.synthesizer_optimizer.state_dict()
    replace_atomically(target, lambda partial: torch.save(state, partial))


def load_checkpoint(path: str, compute: StageCompute) -> None:
    state = torch.load(path, map_location=next(compute.module.parameters()).device, weights_only=True)
    compute.module.load_state_dict(state["module"])
    compute.module_optimizer.load_state_dict(state["module_optimizer"])
    if compute.synthesizer is not None and compute.synthesizer_optimizer is not None:
        compute.synthesizer.load_state_dict(state["synthesizer"])
        compute.synthesizer_optimizer.load_state_dict(state["synthesizer_optimizer"])
    compute.steps = int(state["steps"])
    compute.restored()
