"""workers/build/model_piece.py: the stages of a cut model, chained, compute the model; each sends each output
edge its own tensor; and in backprop at window 1 the stages in one process train to the bit as the uncut model
under plain autograd, BatchNorm statistics included."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni.coordinator.jobs.job import job_from_table
from dni.coordinator.jobs.split import balance_job
from dni.coordinator.train.in_process import InProcessGraph
from dni.errors import ConfigError
from dni.workers.build.model_piece import ModelPiece, model_piece, piece_of
from dni.workers.build.model_slice import build_model
from dni.workers.build.partition import cut_model

MODEL = f"{__name__}:skip"
CUT = ["a", "b", "c"]
FEATURES, CLASSES, BATCH = 6, 3, 8


class Skip(nn.Module):
    """a -> b -> c -> d, a's output also joined into d's input: a skip over two cuts, BatchNorm on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.b, self.c = nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 5)
        self.d = nn.Linear(13, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.a(x)
        return self.d(torch.cat([self.c(self.b(first)), first], dim=1))


def skip() -> Skip:
    return Skip()


def test_the_stages_chained_compute_the_model_and_each_edge_carries_its_own_tensor():
    torch.manual_seed(0)
    model = skip().eval()
    partition = cut_model(model, CUT, "skip")
    pieces = [piece_of(partition, index, (FEATURES,)).eval() for index in range(4)]
    x = torch.randn(BATCH, FEATURES)
    to_b, to_d = pieces[0](x)  # one value, whole to `b` and flat into `d`'s join
    assert torch.equal(to_b, model.a(x)) and torch.equal(to_d, model.a(x).flatten(1))
    deep = pieces[2](pieces[1](to_b))
    assert torch.equal(pieces[3](torch.cat([to_d, deep], dim=1)), model(x))


def test_a_piece_checks_the_input_its_edges_bring():
    assert isinstance(model_piece((FEATURES,), MODEL, CUT, 0, 0, [FEATURES]), ModelPiece)
    with pytest.raises(ConfigError, match=r"stage 3 takes \[13\], but its inputs bring \[12\]"):
        model_piece((12,), MODEL, CUT, 3, 0, [FEATURES])
    with pytest.raises(ConfigError, match="stage 4 is not one of the 4 stages"):
        model_piece((8,), MODEL, CUT, 4, 0, [FEATURES])
    with pytest.raises(ConfigError, match="a cut model's stages need the data's shape, which a run fills in"):
        model_piece((FEATURES,), MODEL, CUT, 0, 0, [])


def job(mode: str):
    table = {"name": "skip", "dataset": "mnist", "model": MODEL, "cut": CUT, "mode": mode, "seed": 5,
             "optimizer": {"name": "adam", "lr": 1e-2}, "batch_size": BATCH, "synthesizer": {"kind": "mlp", "hidden": 8}}
    fitted, record = balance_job(job_from_table(table), (FEATURES,))
    assert record == {"cut": CUT, "how": "as the job says"}
    return fitted


def test_backprop_in_one_process_is_the_uncut_model_under_autograd_to_the_bit():
    torch.set_num_threads(1)
    stages = InProcessGraph(job("backprop"), (FEATURES,), CLASSES)
    model = build_model(MODEL, 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    generator = torch.Generator().manual_seed(1)
    for step in range(5):
        x, y = torch.randn(BATCH, FEATURES, generator=generator), torch.randint(0, CLASSES, (BATCH,), generator=generator)
        stages.step(step, x, y)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        optimizer.step()
    cut = {key.removeprefix("body."): value for compute in stages.computes for key, value in compute.module.state_dict().items()}
    assert sorted(cut) == sorted(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(cut[key], value), key


def test_in_sg_each_output_edge_has_a_synthesizer_of_its_own_shape_and_learns():
    stages = InProcessGraph(job("sg"), (FEATURES,), CLASSES)
    first = stages.computes[0]
    assert first.outputs == ("b", "head")
    assert [interface.synthesizer.output.out_features for interface in first.interfaces] == [8, 8]
    before = [interface.synthesizer.output.weight.detach().clone() for interface in first.interfaces]
    for step in range(3):
        stages.step(step, torch.randn(BATCH, FEATURES), torch.randint(0, CLASSES, (BATCH,)))
    assert all(not torch.equal(interface.synthesizer.output.weight, start)
               for interface, start in zip(first.interfaces, before))
