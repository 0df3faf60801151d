"""An example layer worker stage, written outside dni's core packages.

`GatedLinear` is a gated linear unit followed by BatchNorm: out = BN(W x * sigmoid(V x)).
The class itself is the stage builder: dni calls `GatedLinear(input_shape, **params)`
in the worker process with the per-example input shape and the job file's
parameters, and the module maps a batch (B, *input_shape) to (B, features).

Use it from a job file by import path (with this folder on PYTHONPATH):

    [[stages]]
    kind = "gated_stage:GatedLinear"
    features = 128
    synthesizer = { kind = "mlp", hidden = 256 }

or, once this folder is installed (`pip install ./examples/gated_stage`), by the
name its entry point registers: `kind = "gated_linear"`.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class GatedLinear(nn.Module):
    wants_labels = False  # set True to be called as forward(x, labels)

    def __init__(self, input_shape: tuple[int, ...], features: int) -> None:
        super().__init__()
        width = math.prod(input_shape)
        self.value = nn.Linear(width, features)
        self.gate = nn.Linear(width, features)
        self.norm = nn.BatchNorm1d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.norm(self.value(x) * torch.sigmoid(self.gate(x)))
