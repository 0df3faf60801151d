"""Which device a stage runs on (`cpu`, `cuda`, `cuda:N`, or `auto`), and moving arrays between it and the host.

Messages arrive and leave as host arrays. For a GPU stage each crossing goes
through page-locked memory from torch's caching host allocator: such copies run
at full bus speed and asynchronously, and the allocator hands the same blocks
out again once the copies that used them are done, so the steady state
allocates nothing.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch

from dni.errors import ConfigError
from dni.spec import check_device

__all__ = ["arrays_on_host", "launched_local_rank", "resolve_device", "synchronizer", "to_device", "to_host"]

ALIGNMENT = 64  # bytes: torch's own CPU allocations


def resolve_device(requested: str, stage_index: int, local_rank: Optional[int] = None) -> str:
    """The device a stage runs on. `auto`: this process's GPU under torchrun (`cuda:LOCAL_RANK`, one GPU
    per rank of a host, `local_rank` or else the environment torchrun sets), else GPU `stage_index`,
    modulo the GPUs this process sees; the CPU where it sees none."""
    check_device(requested)
    gpus = torch.cuda.device_count()
    if requested == "auto":
        if local_rank is None:
            local_rank = launched_local_rank()
        slot = stage_index if local_rank is None else local_rank
        return f"cuda:{slot % gpus}" if gpus else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.partition(":")[2] or 0)
        if index >= gpus:
            raise ConfigError(f"device {requested!r} asked for, but this worker sees {gpus} CUDA device(s)")
    return requested


def launched_local_rank() -> Optional[int]:
    """LOCAL_RANK when torchrun (torch.distributed.elastic, which also sets TORCHELASTIC_RUN_ID) started this process."""
    value = os.environ.get("LOCAL_RANK", "")
    return int(value) if "TORCHELASTIC_RUN_ID" in os.environ and value.isdigit() else None


def to_device(array: np.ndarray, device: str) -> torch.Tensor:
    """A received array as a tensor on `device`.

    On the CPU the tensor shares the array's memory where it can: the received
    message's buffer, which is this worker's own and lives as long as the
    tensor. A frame ZeroMQ placed off a 64-byte boundary (or read-only) is
    copied, since CPU kernels may round differently on unaligned memory and
    the pipeline must compute exactly what one process computes. For a GPU it is copied once into
    page-locked memory, from where the copy to the device overlaps with
    whatever the host does next.
    """
    if device == "cpu":
        if not array.flags.writeable:
            return torch.tensor(array)
        tensor = torch.from_numpy(array)
        return tensor if array.ctypes.data % ALIGNMENT == 0 else tensor.clone()  # kernels may round by alignment
    staging = torch.empty(array.shape, dtype=getattr(torch, array.dtype.name), pin_memory=True)
    staging.numpy()[...] = array
    return staging.to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a host array, ready for the socket (one tensor: see `arrays_on_host`)."""
    return arrays_on_host({"": tensor})[""]


def arrays_on_host(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The tensors of one message as host arrays, with at most one wait for the device.

    A CPU tensor is shared, not copied. GPU tensors are copied into page-locked
    memory, all queued before one wait on the stream, since the socket reads
    that memory next; each array holds its block until ZeroMQ has sent it.
    """
    arrays: dict[str, np.ndarray] = {}
    stream = None
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        if tensor.device.type == "cpu":
            arrays[name] = tensor.numpy()
            continue
        staging = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        staging.copy_(tensor, non_blocking=True)
        stream = torch.cuda.current_stream(tensor.device)
        arrays[name] = staging.numpy()
    if stream is not None:
        stream.synchronize()
    return arrays


def synchronizer(device: str) -> Optional[Callable[[], None]]:
    """What waits until the device has finished its queued work; None where work is never queued (CPU)."""
    if device == "cpu":
        return None
    return lambda: torch.cuda.synchronize(device)
