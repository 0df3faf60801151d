"""The last stage's loss, chosen per job: a built-in name or an import path, and when a prediction is right.

A loss is any callable `loss(logits, labels)` returning one non-negative loss per example, shape `(N,)`, in
nats: the last stage sums it (as the reference does) and, in `sl` mode, sends it upstream as the last synthetic
loss's target. A sequence job's readout is the same last stage applied at every step: its B x T steps are N
examples, and its mask weighs them (a step outside the mask scores nothing). Built in:

- cross_entropy: softmax cross-entropy over the classes (the reference experiment's; a character's next one).
- multi_margin: multi-class hinge loss.
- bits: a vector of independent bits per example (the copy tasks): binary cross-entropy summed over them.

An example is right when its class (or its every bit) is predicted. Names without a colon must be built in here
(`dni.spec.LOSS_NAMES` lists them, so a job file is checked without importing torch); `package.module:function`
imports a plug-in, as stage kinds do, and is right where the arg-max class is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from dni.workers.build.registry import UnknownBuilderError, import_callable

__all__ = ["BUILTIN_LOSSES", "Loss", "LossFunction", "binary_bits", "bits_right", "class_right", "cross_entropy", "multi_margin",
           "per_example_losses", "resolve_loss"]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per example."""
    return F.cross_entropy(logits, labels, reduction="none")


def multi_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class hinge loss per example (margin 1), averaged over the classes as torch does."""
    return F.multi_margin_loss(logits, labels, reduction="none")


def binary_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each example's predicted bits, summed over them."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)


def class_right(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1) == labels


def bits_right(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((logits > 0) == (targets > 0.5)).all(-1)


@dataclass(frozen=True)
class Loss:
    """A loss per example and when an example is right."""
    name: str
    per_example: LossFunction
    right: LossFunction = class_right


BUILTIN_LOSSES: dict[str, Loss] = {loss.name: loss for loss in (
    Loss("cross_entropy", cross_entropy), Loss("multi_margin", multi_margin), Loss("bits", binary_bits, bits_right))}


def resolve_loss(name: str) -> Loss:
    """The loss a job names; UnknownBuilderError (a ConfigError) when nothing provides it."""
    if ":" in name:
        return Loss(name, import_callable(name, "loss"))
    if name in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[name]
    raise UnknownBuilderError(f"unknown loss {name!r}; known: {', '.join(BUILTIN_LOSSES)} (or an import path package.module:function)")


def per_example_losses(loss: Loss, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`loss(logits, labels)`, checked to be one float per example; a loss that breaks this fails the stage."""
    losses = loss.per_example(logits, labels)
    expected = labels.shape[:1]
    if not isinstance(losses, torch.Tensor) or losses.shape != expected or not losses.is_floating_point():
        got = f"{losses.dtype} {list(losses.shape)}" if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss {loss.name!r} must return one float per example, shape {list(expected)}, got {got}")
    return losses
