"""The contract a layer worker's stage honours; built-in and user stages alike.

A *stage builder* is any callable

    builder(input_shape: tuple[int, ...], **params) -> torch.nn.Module

called inside the worker process with the per-example shape of the stage's
input and the stage's parameters from the job file. The module's
``forward(x)`` receives a float batch ``(B, *input_shape)`` and returns a
tensor ``(B, *output_shape)``; the worker infers ``output_shape`` by running
the module once. A module that sets ``wants_labels = True`` is called as
``forward(x, labels)`` with the int64 class labels of the batch.

A *synthesizer builder* is any callable

    builder(input_shape, output_shape, condition_dim: int, zero_init: bool, **params) -> torch.nn.Module

whose module maps ``(h, condition)`` to a prediction ``(B, *output_shape)``:
the gradient w.r.t. ``h`` (``output_shape == input_shape``) for synthetic
gradients, or one value per example (``output_shape == (1,)``) for synthetic
loss. ``condition`` is ``None`` or a one-hot label batch ``(B, condition_dim)``.
``zero_init`` asks for a zero-initialised output layer, so that training starts
from "no gradient" as in the reference experiment.

Builders are found by name: a built-in name, a name registered through the
``dni.stages`` / ``dni.synthesizers`` entry-point groups, or an import path
``package.module:callable``.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
from torch import nn

__all__ = ["StageBuilder", "SynthesizerBuilder", "call_stage"]

Shape = tuple[int, ...]


class StageBuilder(Protocol):
    def __call__(self, input_shape: Shape, **params: Any) -> nn.Module: ...


class SynthesizerBuilder(Protocol):
    def __call__(
        self, input_shape: Shape, output_shape: Shape, condition_dim: int, zero_init: bool, **params: Any
    ) -> nn.Module: ...


def call_stage(module: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """Run a stage module, handing it the labels only if it asked for them."""
    if getattr(module, "wants_labels", False):
        return module(x, labels)
    return module(x)
