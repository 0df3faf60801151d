"""workers/interfaces/backward.py: the synthesizer of one outgoing edge predicts, and regresses the prediction it made
(with the weights that made it, from its stash) onto the true target, against the regression written out in torch.

A linear synthesizer of 4 features, a batch of three, plain SGD so every step is exact."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni.spec import Mode, OptimizerSpec
from dni.workers.interfaces.backward import BackwardInterface
from dni.workers.stage.blocks import per_step
from dni.workers.interfaces.synthesizers import MLPSynthesizer
from dni.workers.stage.timing import Timeline

LR = 0.1
WIDTH, BATCH = 4, 3


def synthesizer(output: int = WIDTH) -> nn.Module:
    torch.manual_seed(0)
    return MLPSynthesizer((WIDTH,), (output,), 0, zero_init=False, layers=0)


def interface(mode: Mode = Mode.SG, window: int = 1, over_steps: bool = False,
              module: nn.Module | None = None) -> BackwardInterface:
    return BackwardInterface(module if module is not None else synthesizer(), mode=mode,
                             optimizer=OptimizerSpec("sgd", LR), window=window, timeline=Timeline(), over_steps=over_steps)


def tensor(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def regressed(module: nn.Module, h: torch.Tensor, target: torch.Tensor, onto: nn.Module) -> float:
    """One SGD step of `onto` along the gradient of `module`'s regression of h onto target; that regression's loss."""
    loss = F.mse_loss(module(h, None), target)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    with torch.no_grad():
        for parameter, grad in zip(onto.parameters(), grads):
            parameter -= LR * grad
    return float(loss.detach())


def test_with_a_window_of_one_the_prediction_regresses_onto_its_target_by_one_step():
    edge, reference = interface(), synthesizer()
    h, target = tensor(1, BATCH, WIDTH), tensor(2, BATCH, WIDTH)
    prediction = edge.predict(h, None)
    torch.testing.assert_close(prediction.value, reference(h, None))
    assert prediction.replica is None, "a window of one predicts with the live synthesizer"
    edge.learn(prediction, target)
    loss = regressed(reference, h, target, onto=reference)
    assert edge.loss is not None and float(edge.loss) == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(edge.synthesizer.output.weight, reference.output.weight)
    torch.testing.assert_close(edge.synthesizer.output.bias, reference.output.bias)


def test_a_wider_window_learns_from_the_stashed_prediction_not_one_made_afresh():
    edge = interface(window=2)
    before = copy.deepcopy(edge.synthesizer)
    h1, h2 = tensor(1, BATCH, WIDTH), tensor(3, BATCH, WIDTH)
    first, second = edge.predict(h1, None), edge.predict(h2, None)  # both by the weights before any step
    edge.learn(first, tensor(2, BATCH, WIDTH))
    after_first = copy.deepcopy(edge.synthesizer)
    edge.learn(second, tensor(4, BATCH, WIDTH))

    reference = copy.deepcopy(before)
    regressed(before, h1, tensor(2, BATCH, WIDTH), onto=reference)
    torch.testing.assert_close(after_first.output.weight, reference.output.weight)
    loss = regressed(before, h2, tensor(4, BATCH, WIDTH), onto=reference)  # the gradient of the stashed weights' error
    assert float(edge.loss) == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(edge.synthesizer.output.weight, reference.output.weight)
    afresh = copy.deepcopy(after_first)
    regressed(after_first, h2, tensor(4, BATCH, WIDTH), onto=afresh)
    assert not torch.allclose(edge.synthesizer.output.weight, afresh.output.weight), "afresh would differ"
    assert edge.stash.refreshes == 1 and all(replica.users == 0 for replica in edge.stash.replicas)


def test_sl_predicts_a_squared_loss_per_example():
    edge = interface(Mode.SL, module=synthesizer(output=1))
    h = tensor(1, BATCH, WIDTH)
    prediction = edge.predict(h, None)
    torch.testing.assert_close(prediction.value, edge.synthesizer(h, None).square())
    assert prediction.value.shape == (BATCH, 1) and (prediction.value >= 0).all()


def test_over_steps_it_predicts_at_every_step_of_a_chunk():
    edge = interface(over_steps=True)
    h = tensor(1, BATCH, 5, WIDTH)
    prediction = edge.predict(h, None)
    assert prediction.value.shape == (BATCH, 5, WIDTH)
    torch.testing.assert_close(prediction.value, per_step(lambda x: edge.synthesizer(x, None), h))


def test_its_checkpoint_is_named_by_the_interface_and_a_restore_retires_the_stashed_weights():
    edge = interface(window=2)
    state = copy.deepcopy(edge.checkpoint_state())  # as saved: a state dict holds the live tensors
    assert set(state) == {"synthesizer", "synthesizer_optimizer"}
    assert set(edge.weights()) == {"synthesizer.output.weight", "synthesizer.output.bias"}
    edge.learn(edge.predict(tensor(1, BATCH, WIDTH), None), tensor(2, BATCH, WIDTH))
    version = edge.stash.version
    edge.restore_checkpoint(state)
    assert edge.stash.version == version + 1, "a replica filled before the restore is not used again"
    torch.testing.assert_close(edge.synthesizer.output.weight, synthesizer().output.weight)
