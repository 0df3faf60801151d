"""What a stage computes between its input and its output: a module once per batch, a module at every time step,
or a recurrent core across the chunks of a sequence.

A stage (`dni.workers.stage.compute.StageCompute`) owns the DNI logic of its edges (synthesizers, targets, the window,
the optimiser of its parameters); a block is only the differentiable function in the middle, so that a
feed-forward layer, a sequence job's readout and a recurrent core are trained by the same stage:

- `Feedforward`: the paper's f_i, a module applied once to a batch (B, *in) -> (B, *out).
- `PerStep`: a module applied at every step of a chunk (B, T, *in) -> (B, T, *out), as one batch of B * T.
- `Recurrent`: a core that keeps its state across the chunks of a sequence, trained by truncated BPTT whose
  truncation is bridged by a synthetic gradient over time (`dni.workers.stage.recurrent`).

`forward` keeps the graph (the stage calls it under `torch.no_grad` when nothing here learns), `backward` puts
the gradients of an output gradient into the block's parameters (and its input's `.grad`), `evaluate` runs the
block in eval mode. `Span` says where a chunk lies in its sequence; a feed-forward batch is a whole one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Union, cast

import torch
from torch import nn

from dni.workers.stage.graphs import GraphedCall
from dni.workers.build.contracts import call_stage

__all__ = ["WHOLE", "Block", "Feedforward", "Outputs", "PerStep", "Span", "per_step"]

Outputs = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # a block's output: one for every edge, or one per edge


@dataclass(frozen=True)
class Span:
    """Where a message lies in its sequence: `start` resets a kept state before it, `last` ends the sequence."""
    start: bool = True
    last: bool = True


WHOLE = Span()  # a feed-forward batch: its own sequence of one step


class Block(Protocol):
    """The differentiable middle of a stage (see the module docstring)."""
    module: nn.Module  # the parameters the stage's optimiser trains
    over_steps: bool  # outputs (B, T, ...): a synthesizer of this block's output predicts at every step

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor: ...

    def backward(self, output: Outputs, gradient: Outputs, span: Span) -> None: ...

    def evaluate(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor: ...

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_checkpoint(self, state: dict[str, Any]) -> None: ...

    def weights(self) -> dict[str, torch.Tensor]: ...

    @property
    def synthesizer_loss(self) -> Optional[torch.Tensor]: ...  # its own synthesizer's latest loss, if it has one


def per_step(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A feed-forward module at every step: (B, T, *in) -> (B, T, *out), as one batch of B * T examples."""
    out = module(x.reshape(-1, *x.shape[2:]))
    return out.reshape(*x.shape[:2], *out.shape[1:])


class Feedforward:
    """A module once per batch; replayed as a CUDA graph when `graphed` (`dni.workers.stage.graphs`)."""
    over_steps = False

    def __init__(self, module: nn.Module, graphed: Optional[GraphedCall] = None) -> None:
        self.module = module
        self.graphed = graphed
        self.wants_labels = bool(getattr(module, "wants_labels", False))

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor:
        if self.graphed is None:
            return call_stage(self.module, x, labels)
        return self.graphed(x, cast(torch.Tensor, labels)) if self.wants_labels else self.graphed(x)

    def backward(self, output: Outputs, gradient: Outputs, span: Span) -> None:
        torch.autograd.backward(output, gradient)  # one output, or one per output edge with its own gradient

    def evaluate(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor:
        return _in_eval_mode(self.module, lambda: call_stage(self.module, x, labels))

    def checkpoint_state(self) -> dict[str, Any]:
        return {}  # the module's weights are the stage's to save, with its optimiser

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def weights(self) -> dict[str, torch.Tensor]:
        return {}

    @property
    def synthesizer_loss(self) -> Optional[torch.Tensor]:
        return None  # a module has no synthesizer of its own


class PerStep(Feedforward):
    """A module at every step of a chunk: a sequence job's readout (any stage kind serves)."""
    over_steps = True

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor:
        return per_step(self.module, x)

    def evaluate(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor:
        return _in_eval_mode(self.module, lambda: per_step(self.module, x))


def _in_eval_mode(module: nn.Module, call: Callable[[], torch.Tensor]) -> torch.Tensor:
    module.eval()
    try:
        return call()
    finally:
        module.train()
