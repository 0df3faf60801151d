"""Built-in synthesizers: small models that predict a stage's gradient (or loss).

As in the reference: hidden layers with BatchNorm and ReLU, and an output layer
that starts at zero so that early predictions are "no gradient".
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from dni.workers.build.contracts import Shape
from dni.workers.build.stages import glorot_

__all__ = ["BUILTIN_SYNTHESIZERS", "ConvSynthesizer", "MLPSynthesizer"]


class MLPSynthesizer(nn.Module):
    """Flattened activation (+ one-hot condition) -> hidden Linear+BN+ReLU layers -> output."""

    def __init__(self, input_shape: Shape, output_shape: Shape, condition_dim: int, zero_init: bool,
                 hidden: int = 1024, layers: int = 2) -> None:
        super().__init__()
        self.output_shape = output_shape
        width = math.prod(input_shape) + condition_dim
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        self.hidden = glorot_(nn.Sequential(*blocks))
        self.output = glorot_(nn.Linear(width, math.prod(output_shape)))
        if zero_init:
            nn.init.zeros_(self.output.weight)

    def forward(self, h: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
        features = h.flatten(1)
        if condition is not None:
            features = torch.cat([features, condition], dim=1)
        return self.output(self.hidden(features)).view(-1, *self.output_shape)


class ConvSynthesizer(nn.Module):
    """Conv+BN+ReLU layers over the activation map (+ label channels) -> a conv to the activation's channels.

    For a per-example scalar (synthetic loss) the output map is averaged over space.
    """

    def __init__(self, input_shape: Shape, output_shape: Shape, condition_dim: int, zero_init: bool,
                 channels: int = 128, kernel: int = 5, layers: int = 2) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"conv synthesizer needs (channels, height, width) activations, got {input_shape}")
        self.scalar = output_shape == (1,)
        if not self.scalar and output_shape != input_shape:
            raise ValueError(f"conv synthesizer predicts {input_shape} or (1,), not {output_shape}")
        width = input_shape[0] + condition_dim
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Conv2d(width, channels, kernel, padding="same"), nn.BatchNorm2d(channels), nn.ReLU()]
            width = channels
        self.hidden = glorot_(nn.Sequential(*blocks))
        self.output = glorot_(nn.Conv2d(width, 1 if self.scalar else input_shape[0], kernel, padding="same"))
        if zero_init:
            nn.init.zeros_(self.output.weight)

    def forward(self, h: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
        if condition is not None:
            planes = condition[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, planes], dim=1)
        out = self.output(self.hidden(h))
        return out.mean(dim=(2, 3)) if self.scalar else out


BUILTIN_SYNTHESIZERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLPSynthesizer, "conv": ConvSynthesizer}
