"""uint8 pixels on the wire: the first stage makes the float32 batch the coordinator used to send.

A built-in image dataset's examples are bytes. Sent as float32 every batch would
be four times their size, and the coordinator would spend its CPU converting
and copying them; sent as uint8, the first stage of the pipeline turns them into
floats itself, with the very operations the coordinator's normalisation applies
(`dni.coordinator.data.normalize`), in the same order and in float32, so the batch
the model sees is bit-identical to the one the coordinator would have sent.
The scaling runs on the worker's host, before the batch moves to the stage's
device: on a GPU, torch divides by a scalar as a multiplication by its
reciprocal, which could differ from the CPU's division in the last bit.

Only a stage whose assignment says how to scale (`StageAssignment.pixels`, set
for the first stage of a job whose dataset holds uint8 examples) takes uint8;
every other stage, and every job on float data, takes float32 as before.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from dni.spec import PixelScaling

__all__ = ["as_floats", "scale"]


def scale(pixels: torch.Tensor, scaling: PixelScaling) -> torch.Tensor:
    """The float32 examples that uint8 `pixels` (B, C, ...) stand for, as `Normalization.apply` makes them:
    x / 255 (unless not `divide`), then (x - mean) / std per channel."""
    x = pixels.float()
    if scaling.divide:
        x.div_(255.0)
    if scaling.mean:
        broadcast = (1, -1) + (1,) * (x.dim() - 2)
        x.sub_(torch.tensor(scaling.mean).view(broadcast)).div_(torch.tensor(scaling.std).view(broadcast))
    return x


def as_floats(x: np.ndarray, scaling: Optional[PixelScaling]) -> np.ndarray:
    """A checked batch's examples as the float32 the stage computes on: uint8 pixels scaled on the host (see the
    module docstring), anything else as it came. Pixels need no check for NaN: every byte scales to a number."""
    return x if scaling is None else scale(torch.from_numpy(x), scaling).numpy()
