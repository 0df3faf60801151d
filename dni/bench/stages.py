"""The speedup benchmark's stage: stages of equal cost, optionally with emulated device time.

A benchmark tool, not a layer for jobs: a job names it by import path, `kind = "dni.bench.stages:balanced"`.
Emulated device time is a stage that sleeps instead of computing, so many stages fit on few cores: sleeping takes
no core, so eight emulated stages on a two-core machine behave like eight devices. Backward sleeps twice as long
as forward, the usual ratio for dense layers.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from dni.workers.build.contracts import Shape
from dni.workers.build.stages import glorot_

__all__ = ["EmulatedDelay", "balanced"]


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        time.sleep(seconds)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        time.sleep(2 * ctx.seconds)
        return grad, None


class EmulatedDelay(nn.Module):
    def __init__(self, forward_ms: float) -> None:
        super().__init__()
        self.seconds = forward_ms / 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Sleep.apply(x, self.seconds) if self.seconds > 0 else x


def balanced(input_shape: Shape, features: int = 784, layers: int = 2, classes: int = 0, delay_ms: float = 0.0) -> nn.Module:
    """`layers` Linear+BN+ReLU of equal width (+ logits when `classes`), + optional emulated device time.

    Stages of equal cost, for measuring what update-unlocking buys; with
    `delay_ms` each stage also sleeps as if its work ran on its own accelerator.
    """
    blocks: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(layers):
        blocks += [nn.Linear(width, features), nn.BatchNorm1d(features), nn.ReLU()]
        width = features
    if classes:
        blocks.append(nn.Linear(width, classes))
    blocks.append(EmulatedDelay(delay_ms))
    return glorot_(nn.Sequential(*blocks))
