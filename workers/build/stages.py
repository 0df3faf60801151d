"""Built-in stages: the layers of the reference MNIST FCN and CIFAR-10 CNN.

Weights start Glorot-uniform with zero biases, the initialisation of the
reference experiment (TensorFlow's defaults), rather than PyTorch's.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, TypeVar

import torch
from torch import nn

from dni.workers.build.contracts import Shape

__all__ = ["BUILTIN_STAGES", "Columns", "conv_bn_relu", "glorot_", "linear", "linear_bn_relu"]

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


def glorot_(module: _ModuleT) -> _ModuleT:
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def linear_bn_relu(input_shape: Shape, features: int, columns: Optional[Sequence[int]] = None) -> nn.Module:
    """Flatten, Linear, BatchNorm, ReLU: a hidden layer of the MNIST FCN. `columns = [start, stop]` takes only
    that range of the input's last dimension (a tower that sees part of an image, as the two-towers example's)."""
    layers: list[nn.Module] = []
    if columns is not None:
        start, stop = _columns(columns, input_shape)
        layers.append(Columns(start, stop))
        input_shape = (*input_shape[:-1], stop - start)
    return glorot_(nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(math.prod(input_shape), features), nn.BatchNorm1d(features), nn.ReLU()
    ))


class Columns(nn.Module):
    """The columns start..stop of the last dimension."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.start:self.stop]


def _columns(columns: Sequence[int], input_shape: Shape) -> tuple[int, int]:
    if not (len(columns) == 2 and all(isinstance(c, int) for c in columns) and 0 <= columns[0] < columns[1] <= input_shape[-1]):
        raise ValueError(f"columns must be [start, stop] within 0..{input_shape[-1]}, got {list(columns)}")
    return columns[0], columns[1]


def linear(input_shape: Shape, features: int) -> nn.Module:
    """Flatten and Linear: the logits layer."""
    return glorot_(nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), features)))


def conv_bn_relu(input_shape: Shape, channels: int, kernel: int = 5, pool: str = "none", pool_size: int = 3) -> nn.Module:
    """Conv (same padding), BatchNorm, ReLU and an optional max/avg pool: a block of the CIFAR-10 CNN."""
    if len(input_shape) != 3:
        raise ValueError(f"conv_bn_relu needs (channels, height, width) input, got {input_shape}")
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], channels, kernel, padding="same"), nn.BatchNorm2d(channels), nn.ReLU()
    ]
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
    if pool in pools:
        layers.append(pools[pool](pool_size, pool_size))
    elif pool != "none":
        raise ValueError(f"pool must be 'max', 'avg' or 'none', got {pool!r}")
    return glorot_(nn.Sequential(*layers))


BUILTIN_STAGES: dict[str, Callable[..., nn.Module]] = {"linear_bn_relu": linear_bn_relu, "linear": linear, "conv_bn_relu": conv_bn_relu}
