"""Emulated device time: a stage that sleeps instead of computing, so many stages fit on few cores.

Used by the scaling benchmark to show what decoupling buys when every stage has
its own accelerator. Sleeping takes no core, so eight emulated stages on a
two-core machine behave like eight devices. Backward sleeps twice as long as
forward, the usual ratio for dense layers.
"""
from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["EmulatedDelay"]


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
