"""CUDA graphs for a stage's training passes: one launch instead of dozens for a step that is all launches.

On a GPU a small stage's step is bound by the host queuing kernels, not by the
device running them. `GraphedCall` captures a module's training forward and
backward as CUDA graphs (`torch.cuda.make_graphed_callables`) for the shapes of
the first training batch; later batches of those shapes replay the graphs, any
other shape (a last partial batch) and evaluation run the module as it is.

A graph reuses its input and output buffers, so each forward must be followed
by its own backward before the next forward. That holds for a stage's module
in every mode (its backward comes with the synthetic update, or with the target
of a locked stage), and for the synthesizer only with a window of one batch in
`sg` and `cdni` (`StageCompute` graphs it only then; synthetic loss
backpropagates through its prediction twice). Capture runs the module a few
times on the first batch: BatchNorm's running statistics are put back
afterwards, so graphed and eager stages train alike. A module that cannot be
captured (host synchronisation inside, say) runs eagerly, with a warning.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from torch import nn

__all__ = ["GraphedCall", "Unconditioned"]

log = logging.getLogger("dni.worker")


class Unconditioned(nn.Module):
    """A synthesizer called without a condition (`sg`), as a module of tensors only, which graphs need."""

    def __init__(self, synthesizer: nn.Module) -> None:
        super().__init__()
        self.synthesizer = synthesizer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.synthesizer(h, None)


class GraphedCall:
    def __init__(self, module: nn.Module, where: str) -> None:
        self.module = module
        self.where = where
        self.eager: Callable[..., torch.Tensor] = module.forward
        self.signature: Optional[tuple] = None
        self.failed = False

    @staticmethod
    def _signature(args: Sequence[torch.Tensor]) -> tuple:
        return tuple((arg.shape, arg.dtype, arg.requires_grad) for arg in args)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.failed or not self.module.training or not torch.is_grad_enabled():
            return self.eager(*args)
        signature = self._signature(args)
        if self.signature is None:
            self._capture(args, signature)
        if signature != self.signature or self.failed:
            return self.eager(*args)
        return self.module(*args)

    def _capture(self, args: Sequence[torch.Tensor], signature: tuple) -> None:
        self.signature = signature
        samples = tuple(arg.detach().clone().requires_grad_(arg.requires_grad) for arg in args)
        buffers = {name: buffer.detach().clone() for name, buffer in self.module.named_buffers()}
        try:
            torch.cuda.make_graphed_callables(self.module, samples)
        except Exception as error:  # a module that cannot be captured still trains, eagerly
            log.warning("%s: cannot capture a CUDA graph (%s: %s); running eagerly", self.where, type(error).__name__, error)
            self.module.forward = self.eager
            self.failed = True
        finally:
            with torch.no_grad():
                for name, buffer in self.module.named_buffers():
                    buffer.copy_(buffers[name])
