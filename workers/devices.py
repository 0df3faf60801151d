"""Which device a stage runs on: `cpu`, `cuda`, `cuda:N`, or `auto` (spread stages over the visible GPUs)."""
from __future__ import annotations

import re

import torch

from workers.spec import ConfigError

DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def resolve_device(requested: str, stage_index: int) -> str:
    if not DEVICE_PATTERN.match(requested):
        raise ConfigError(f"device {requested!r} is not one of cpu, cuda, cuda:N, auto")
    gpus = torch.cuda.device_count()
    if requested == "auto":
        return f"cuda:{stage_index % gpus}" if gpus else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.partition(":")[2] or 0)
        if index >= gpus:
            raise ConfigError(f"device {requested!r} asked for, but this worker sees {gpus} CUDA device(s)")
    return requested


def to_device(array_tensor: torch.Tensor, device: str) -> torch.Tensor:
    """Host tensor to the stage's device; through pinned memory so the copy can overlap."""
    if device == "cpu":
        return array_tensor
    return array_tensor.pin_memory().to(device, non_blocking=True)
