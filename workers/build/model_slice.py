"""A stage cut from a whole model: the stage kind `MODEL_SLICE`, shipped with dni and named by its import path.

A job that names `model = "package.module:function"` runs as slices of one
model. Every worker builds the whole model from the job's seed and keeps only
its children[start:end], so every stage starts from the weights the unsplit
model would have, wherever it is built.
"""
from __future__ import annotations

import torch
from torch import nn

from dni.errors import ConfigError
from dni.workers.build.contracts import Shape
from dni.workers.build.registry import import_callable

__all__ = ["MODEL_SLICE", "build_model", "model_children", "model_slice"]

MODEL_SLICE = "dni.workers.build.model_slice:model_slice"


def build_model(model: str, seed: int) -> nn.Module:
    """The model `package.module:function` returns, built right after seeding torch with `seed`."""
    function = import_callable(model, "model")
    torch.manual_seed(seed)
    try:
        built = function()
    except Exception as error:  # the model's own code failing: say whose it is
        raise ConfigError(f"model {model!r} failed to build: {type(error).__name__}: {error}") from error
    if not isinstance(built, nn.Module):
        raise ConfigError(f"model {model!r} must return an nn.Module, got {type(built).__name__}")
    return built


def model_children(model: str, seed: int) -> list[nn.Module]:
    """The model's children in order, the pieces a split cuts between; at least two."""
    children = list(build_model(model, seed).children())
    if len(children) < 2:
        raise ConfigError(f"model {model!r} has {len(children)} child module{'' if len(children) == 1 else 's'}; "
                          "a split needs at least 2 (return an nn.Sequential of its layers or blocks)")
    return children


def model_slice(input_shape: Shape, model: str, start: int, end: int, seed: int) -> nn.Module:
    """children[start:end] of the model, as built from `seed` (the job's seed, the same in every worker)."""
    children = model_children(model, seed)
    if not 0 <= start < end <= len(children):
        raise ConfigError(f"model {model!r}: slice [{start}:{end}] is not within its {len(children)} children")
    return nn.Sequential(*children[start:end])
