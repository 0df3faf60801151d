"""The last stage's loss, chosen per job: a built-in name or an import path.

The loss was once written into the worker twice (training and evaluation);
a job now names it (`loss = "cross_entropy"`, the default) and only the last
stage resolves it. A loss is any callable `loss(logits, labels)` returning one
non-negative loss per example, shape `(B,)`: the worker sums it (as the
reference does) and, in `sl` mode, sends it upstream as the last synthetic
loss's target. Names without a colon must be built in here (`dni.spec`
lists the same names, so a job file is checked without importing torch);
`package.module:function` imports a plug-in, as stage kinds do.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dni.workers.registry import UnknownBuilderError, import_callable

__all__ = ["BUILTIN_LOSSES", "Loss", "cross_entropy", "multi_margin", "per_example_losses", "resolve_loss"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per example: the reference experiment's loss."""
    return F.cross_entropy(logits, labels, reduction="none")


def multi_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class hinge loss per example (margin 1), averaged over the classes as torch does."""
    return F.multi_margin_loss(logits, labels, reduction="none")


BUILTIN_LOSSES: dict[str, Loss] = {"cross_entropy": cross_entropy, "multi_margin": multi_margin}


def resolve_loss(name: str) -> Loss:
    """The loss a job names; UnknownBuilderError (a ConfigError) when nothing provides it."""
    if ":" in name:
        return import_callable(name, "loss")
    if name in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[name]
    raise UnknownBuilderError(f"unknown loss {name!r}; known: {', '.join(BUILTIN_LOSSES)} (or an import path package.module:function)")


def per_example_losses(loss: Loss, name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`loss(logits, labels)`, checked to be one float per example; a loss that breaks this fails the stage."""
    losses = loss(logits, labels)
    if not isinstance(losses, torch.Tensor) or losses.shape != labels.shape or not losses.is_floating_point():
        got = f"{losses.dtype} {list(losses.shape)}" if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss {name!r} must return one float per example, shape {list(labels.shape)}, got {got}")
    return losses
