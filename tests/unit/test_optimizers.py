"""workers/stage/optimizers.py: the direct step is torch's own step, to the bit, before and after a reload of the state."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dni.spec import OptimizerSpec
from dni.workers.stage.optimizers import Stepper, make_optimizer


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def train(module: nn.Module, step, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for parameter in module.parameters():
            parameter.grad = torch.randn(parameter.shape, generator=generator)
        step()


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_the_direct_step_equals_the_optimisers_own(name):
    spec = OptimizerSpec(name, 0.01)
    reference, direct = model(), model()
    optimizer = make_optimizer(spec, reference.parameters())
    stepper = Stepper(make_optimizer(spec, direct.parameters()))
    train(reference, optimizer.step, 5)
    train(direct, stepper.step, 5)
    assert stepper.kernel is not None, "after the first step the kernel is called directly"
    for a, b in zip(reference.parameters(), direct.parameters()):
        assert torch.equal(a, b)


def test_a_reloaded_state_is_read_afresh():
    spec = OptimizerSpec("adam", 0.01)
    source, target = model(), model()
    source_stepper = Stepper(make_optimizer(spec, source.parameters()))
    train(source, source_stepper.step, 3)
    optimizer = make_optimizer(spec, target.parameters())
    stepper = Stepper(optimizer)
    train(target, stepper.step, 1, seed=9)
    target.load_state_dict(source.state_dict())
    optimizer.load_state_dict(copy.deepcopy(source_stepper.optimizer.state_dict()))  # as a checkpoint file would
    stepper.refresh()
    train(source, source_stepper.step, 2, seed=4)
    train(target, stepper.step, 2, seed=4)
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    assert int(optimizer.state[next(target.parameters())]["step"]) == 5


def test_a_parameter_without_a_gradient_takes_the_optimisers_own_path():
    module = model()
    stepper = Stepper(make_optimizer(OptimizerSpec("adam", 0.01), module.parameters()))
    train(module, stepper.step, 2)
    first = next(module.parameters())
    first.grad = None
    before = first.detach().clone()
    stepper.step()
    assert torch.equal(first, before), "torch's Adam skips a parameter without a gradient, and so does the stepper"
