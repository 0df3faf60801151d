"""A sequence job's per-step losses, in bits: what its readout (the last stage) scores each time step with.

- bits: each step predicts a vector of independent bits (the copy tasks); its loss is the binary cross
  entropy summed over them. Targets are float (B, T, C) of 0s and 1s.
- cross_entropy: each step predicts one of C classes (the next character); targets are int64 (B, T).

Both return (B, T) bits; a step is right when every bit (or the class) is.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["STEP_LOSSES", "StepLoss", "binary_bits", "character_bits", "step_correct"]

StepLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def binary_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy in bits of each step's predicted bits, summed over the bits: (B, T)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1) / math.log(2)


def character_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy in bits of each step's class: (B, T)."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") / math.log(2)


STEP_LOSSES: dict[str, StepLoss] = {"bits": binary_bits, "cross_entropy": character_bits}


def step_correct(loss: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) booleans: the step's every bit (`bits`) or its class (`cross_entropy`) predicted right."""
    if loss == "bits":
        return ((logits > 0) == (targets > 0.5)).all(-1)
    return logits.argmax(-1) == targets
