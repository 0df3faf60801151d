"""Built-in stages: the layers of the reference MNIST FCN and CIFAR-10 CNN.

Weights start Glorot-uniform with zero biases, the initialisation of the
reference experiment (TensorFlow's defaults), rather than PyTorch's.
"""
from __future__ import annotations

import math
from typing import Callable, TypeVar

from torch import nn

from dni.workers.build.contracts import Shape

__all__ = ["BUILTIN_STAGES", "conv_bn_relu", "glorot_", "linear", "linear_bn_relu"]

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


def glorot_(module: _ModuleT) -> _ModuleT:
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def linear_bn_relu(input_shape: Shape, features: int) -> nn.Module:
    """Flatten, Linear, BatchNorm, ReLU: a hidden layer of the MNIST FCN."""
    return glorot_(nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), features), nn.BatchNorm1d(features), nn.ReLU()
    ))


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
