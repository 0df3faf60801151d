"""workers/interfaces/stash.py: which weights each prediction is made with, and how few copies that takes."""
from __future__ import annotations

import torch
from torch import nn

from dni.workers.interfaces.stash import WeightStash


def synthesizer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))


def step(module: nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter += 1.0


def test_with_a_window_of_one_the_live_synthesizer_predicts_and_nothing_is_copied():
    live = synthesizer()
    stash = WeightStash(live, window=1)
    for _ in range(3):
        module, parameters, replica = stash.acquire()
        assert module is live and parameters == list(live.parameters()) and replica is None
        stash.release(replica)
        stash.changed()
    assert stash.refreshes == 0


def test_predictions_between_two_steps_share_one_copy_of_the_weights():
    stash = WeightStash(synthesizer(), window=4)
    first = stash.acquire()
    second = stash.acquire()
    assert first[0] is second[0] and stash.refreshes == 1


def test_a_replica_keeps_the_old_weights_while_a_prediction_still_needs_them():
    live = synthesizer()
    stash = WeightStash(live, window=4)
    old_module, old_parameters, old = stash.acquire()
    before = [p.detach().clone() for p in old_parameters]
    step(live)
    stash.changed()
    new_module, new_parameters, new = stash.acquire()
    assert new_module is not old_module and stash.refreshes == 2
    assert all(torch.equal(a, b) for a, b in zip(before, old_parameters)), "the pending prediction's weights are untouched"
    assert all(torch.equal(a, b) for a, b in zip(new_parameters, live.parameters()))


def test_a_released_replica_is_refilled_instead_of_a_new_one_made():
    live = synthesizer()
    stash = WeightStash(live, window=4)
    _, _, first = stash.acquire()
    stash.release(first)
    step(live)
    stash.changed()
    _, parameters, second = stash.acquire()
    assert second is first and len(stash.replicas) == 1
    assert all(torch.equal(a, b) for a, b in zip(parameters, live.parameters()))


def test_replicas_share_the_live_running_statistics():
    live = synthesizer()
    stash = WeightStash(live, window=2)
    module, _, _ = stash.acquire()
    module(torch.randn(8, 3))
    assert not torch.equal(live[1].running_mean, torch.zeros(4)), "the replica's forward moved the live statistics"
    assert module[1].running_mean is live[1].running_mean
