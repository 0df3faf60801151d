"""workers/build/model_slice.py: each slice holds the unsplit model's own weights, and a model split at window 1 in
backprop computes, to the bit, what plain autograd computes on the whole model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec
from dni.workers.stage.compute import StageCompute
from dni.workers.build.model_slice import MODEL_SLICE, build_model, model_children, model_slice
from dni.workers.build.registry import resolve_stage

MODEL = f"{__name__}:make"
SEED = 3
CUTS = [(0, 2), (2, 5), (5, 7)]
LR = 1e-2


def make() -> nn.Sequential:
    """Seven children, BatchNorm among them: its running statistics must follow the batches too."""
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 4))


def lonely() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 3))


def not_a_module() -> str:
    return "a string"


def broken() -> nn.Module:
    raise TypeError("no layers today")


def slices() -> list[nn.Module]:
    return [model_slice((3, 4), MODEL, start, end, SEED) for start, end in CUTS]


def test_the_stage_kind_is_found_by_its_path():
    assert resolve_stage(MODEL_SLICE) is model_slice


def test_every_slice_starts_from_the_unsplit_models_weights():
    torch.manual_seed(SEED)
    whole = make().state_dict()
    torch.manual_seed(SEED + 1)  # whatever ran before in this process: the slice seeds itself
    pieces = {f"{start + int(name.split('.')[0])}.{name.split('.', 1)[1]}": value
              for (start, _), piece in zip(CUTS, slices()) for name, value in piece.state_dict().items()}
    assert pieces.keys() == whole.keys()
    assert all(torch.equal(pieces[name], whole[name]) for name in whole)


def test_a_slice_keeps_only_its_children_in_order():
    first, middle, last = slices()
    assert [type(child) for child in middle] == [nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert len(first) == 2 and len(last) == 2


def test_a_model_split_at_window_one_in_backprop_trains_as_plain_autograd_does():
    stages = [StageCompute(module, mode=Mode.BACKPROP, optimizer=OptimizerSpec("adam", LR), first=index == 0,
                           loss="cross_entropy" if index == len(CUTS) - 1 else None, window=1)
              for index, module in enumerate(slices())]
    torch.manual_seed(SEED)
    whole = make()
    optimizer = torch.optim.Adam(whole.parameters(), lr=LR, fused=True)  # the stages' Adam, fused
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 4, generator=generator), torch.randint(0, 4, (8,), generator=generator)) for _ in range(5)]
    initial = [p.detach().clone() for p in whole.parameters()]
    for step, (x, labels) in enumerate(batches):
        h0 = stages[0].forward(step, x, labels)
        h1 = stages[1].forward(step, h0, labels)
        assert stages[0].receive_target(step, stages[1].receive_target(step, stages[2].train_last(h1, labels).upstream)) is None
        optimizer.zero_grad()
        F.cross_entropy(whole(x), labels, reduction="sum").backward()
        optimizer.step()
    split = [value for stage in stages for value in stage.module.state_dict().values()]
    assert all(not torch.equal(before, after) for before, after in zip(initial, whole.parameters()))
    assert len(split) == len(whole.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(split, whole.state_dict().values()))


@pytest.mark.parametrize("model, message", [
    (f"{__name__}:lonely", "has 1 child module; a split needs at least 2"),
    (f"{__name__}:not_a_module", "must return an nn.Module"),
    (f"{__name__}:nowhere", f"model '{__name__}:nowhere' cannot be imported"),
    ("no_such_package.models:make", "model 'no_such_package.models:make' cannot be imported"),
])
def test_a_model_that_cannot_be_split_is_refused_by_name(model, message):
    with pytest.raises(ConfigError, match=message):
        model_children(model, SEED)


def test_a_model_that_fails_to_build_names_itself():
    with pytest.raises(ConfigError, match=f"model '{__name__}:broken' failed to build: TypeError: no layers today"):
        build_model(f"{__name__}:broken", SEED)


def test_a_slice_outside_the_children_is_refused():
    with pytest.raises(ConfigError, match=r"slice \[5:9\] is not within its 7 children"):
        model_slice((12,), MODEL, 5, 9, SEED)
