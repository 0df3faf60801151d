"""A stage cut from any model by tracing it: the stage kind `MODEL_PIECE`, shipped with dni.

Every worker builds the whole model from the job's seed, traces and cuts it as the job says
(`dni.workers.build.partition`) and keeps its own stage's operations, with the modules they call: the weights
the uncut model would have, wherever the stage is built. `ModelPiece` is that stage as a module: it unpacks
what its input edges bring, runs the operations, and returns one tensor per output edge (a tuple where it has
several, `dni.workers.stage.compute.StageCompute`), packing where an edge carries several values.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import fx, nn

from dni.errors import ConfigError
from dni.workers.build.contracts import Shape
from dni.workers.build.model_slice import build_model
from dni.workers.build.partition import Partition, cut_model

__all__ = ["MODEL_PIECE", "ModelPiece", "model_piece", "piece_of"]

MODEL_PIECE = "dni.workers.build.model_piece:model_piece"


class ModelPiece(nn.Module):
    """One stage of a cut model. `body` takes the values its inputs carry and returns those its outputs carry;
    `takes` are their per-example shapes (unpacked from one flat input where `unpack`), `sends` the body's output
    indices on each output edge and `packs` whether that edge flattens them into one."""

    def __init__(self, body: fx.GraphModule, takes: Sequence[Shape], unpack: bool,
                 sends: Sequence[Sequence[int]], packs: Sequence[bool]) -> None:
        super().__init__()
        self.body = body
        self.takes, self.unpack = [tuple(shape) for shape in takes], unpack
        self.sizes = [math.prod(shape) for shape in self.takes]
        self.sends, self.packs = [tuple(indices) for indices in sends], list(packs)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, tuple[torch.Tensor, ...]]:
        values = [x] if not self.unpack else [part.reshape(len(x), *shape)
                                              for part, shape in zip(x.split(self.sizes, dim=1), self.takes)]
        made = self.body(*values)
        if not self.sends:  # the last stage: the model's output
            return made
        edges = tuple(self._edge([made[index] for index in indices], packed) for indices, packed in zip(self.sends, self.packs))
        return edges[0] if len(edges) == 1 else edges

    @staticmethod
    def _edge(values: list[torch.Tensor], packed: bool) -> torch.Tensor:
        return torch.cat([value.flatten(1) for value in values], dim=1) if packed else values[0]


def model_piece(input_shape: Shape, model: str, cut: Sequence[str], piece: int, seed: int,
                data_shape: Sequence[int]) -> ModelPiece:
    """Stage `piece` of the model cut at `cut`, for data of `data_shape`; it must take `input_shape` (its inputs joined)."""
    if not data_shape:
        raise ConfigError(f"model {model!r}: a cut model's stages need the data's shape, which a run fills in "
                          "(dni.coordinator.jobs.split.balance_job); build them from the job it returns")
    partition = cut_model(build_model(model, seed), cut, model)
    if not 0 <= piece < partition.count:
        raise ConfigError(f"model {model!r}: stage {piece} is not one of the {partition.count} stages cut at {list(cut)}")
    stage = piece_of(partition, piece, tuple(data_shape))
    expected = edge_shape(stage.takes, stage.unpack)
    if tuple(input_shape) != expected:
        raise ConfigError(f"model {model!r}: stage {piece} takes {list(expected)}, but its inputs bring {list(input_shape)}")
    return stage


def piece_of(partition: Partition, piece: int, data_shape: Shape) -> ModelPiece:
    """Stage `piece` of a cut model as a module, for data of `data_shape`."""
    shapes = partition.value_shapes(data_shape)
    inputs = partition.inputs(piece)
    takes = [shapes[value] for crossing in inputs for value in crossing.values]
    sent = partition.sent(piece)
    outputs = partition.outputs(piece) if piece < partition.count - 1 else []
    return ModelPiece(partition.body(piece), takes, any(crossing.packed for crossing in inputs),
                      [[sent.index(value) for value in crossing.values] for crossing in outputs],
                      [crossing.packed for crossing in outputs])


def edge_shape(shapes: Sequence[Shape], packed: bool) -> Shape:
    """What an edge of these values carries per example: the one value's shape, or all of them flattened."""
    return (sum(math.prod(shape) for shape in shapes),) if packed else tuple(shapes[0])
