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

from dataclasses import replace

import numpy as np
import torch

from dni.protocol import Message
from dni.spec import PixelScaling, StageAssignment
from dni.workers.loop.devices import to_device
from dni.workers.loop.validation import Rejected

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


def as_floats(message: Message, config: StageAssignment) -> Message:
    """The batch as the floats its pixels stand for, for a stage told to expect pixels (`config.pixels`), which
    takes `x` only as uint8 (B, *input_shape); any other stage's message as it came. A refusal here loses the
    batch, as any refusal of its inputs does; the floats are then checked as any batch is (`check_batch`)."""
    x = message.tensors.get("x")
    if config.pixels is None or x is None:
        return message
    if x.dtype != np.uint8 or tuple(x.shape[1:]) != tuple(config.input_shape) or x.shape[0] == 0:
        raise Rejected(f"x must be uint8 pixels (B, {', '.join(map(str, config.input_shape))}), got {x.dtype} "
                       f"{list(x.shape)}", message)
    return replace(message, tensors={**message.tensors, "x": scale(to_device(x, "cpu"), config.pixels).numpy()})
