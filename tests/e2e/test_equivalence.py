"""The distributed pipeline computes exactly what a single process computes.

backprop through three worker processes must match plain autograd on the same
network; sg with a window of one batch must match a single-process DNI step
in which every synthesizer predicts, every layer follows its prediction, and
every synthesizer then regresses onto the gradient that came back.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dni.coordinator.data.dataset import load_dataset, train_batches
from dni import run_job
from tests.conftest import small_job
from dni.workers.build.builder import build_stages

pytestmark = pytest.mark.e2e

STEPS = 6


def build_reference(job, input_shape):
    torch.set_num_threads(1)
    return build_stages(job.stages, input_shape=input_shape, mode=job.mode, num_classes=10, seed=job.seed)


def reference_batches(job, data_root: Path):
    data = load_dataset("mnist", data_root, download=False).subset(job.train_subset, job.test_subset)
    return [(x, y) for _, x, y in train_batches(data, job.batch_size, job.seed, job.iterations)], data.input_shape


# Adam as the stages run it, fused: a bias before BatchNorm has a gradient of rounding noise (~1e-9), which Adam
# amplifies to whole steps, so a differently rounded Adam would part ways there.
def adam(parameters, lr):
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def train_backprop(stages, batches, lr):
    network = torch.nn.Sequential(*(stage.module for stage in stages))
    optimizer = adam(network.parameters(), lr)
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(network(x), y, reduction="sum").backward()
        optimizer.step()


def train_dni(stages, batches, lr):
    layers = [adam(stage.module.parameters(), lr) for stage in stages]
    synths = [adam(stage.synthesizer.parameters(), lr) for stage in stages[:-1]]
    for x, y in batches:
        inputs, outputs, targets = [], [], []
        for index, stage in enumerate(stages):
            layer_input = x.detach().requires_grad_(index > 0)
            h = stage.module(layer_input)
            layers[index].zero_grad()
            if stage.synthesizer is None:
                F.cross_entropy(h, y, reduction="sum").backward()
            else:
                with torch.no_grad():
                    predicted = stage.synthesizer(h.detach(), None)
                h.backward(predicted)
            inputs.append(layer_input)
            outputs.append(h.detach())
            x = h
        for index in range(len(stages) - 1):
            targets.append(inputs[index + 1].grad)
        for optimizer in layers:
            optimizer.step()
        for index, optimizer in enumerate(synths):
            optimizer.zero_grad()
            F.mse_loss(stages[index].synthesizer(outputs[index], None), targets[index]).backward()
            optimizer.step()


def assert_same_parameters(stages, saved):
    for index, stage in enumerate(stages):
        state = saved[f"stage{index}"]
        expected = {f"module.{name}": value for name, value in stage.module.state_dict().items()}
        if stage.synthesizer is not None:
            expected.update({f"synthesizer.{name}": value for name, value in stage.synthesizer.named_parameters()})
        for name, value in expected.items():
            torch.testing.assert_close(state[name], value.detach(), rtol=1e-5, atol=1e-6, msg=lambda m, index=index, name=name: f"stage {index} {name}: {m}")


@pytest.mark.parametrize("mode, trainer", [("backprop", train_backprop), ("sg", train_dni)])
def test_pipeline_matches_single_process(mode, trainer, data_root, tmp_path):
    job = small_job(data_root, tmp_path, mode=mode, iterations=STEPS, window=1, batch_size=32,
                    train_subset=640, eval_every=STEPS, seed=7)
    folder, summary = run_job(job, show_progress=False)
    batches, input_shape = reference_batches(job, data_root)
    stages = build_reference(job, input_shape)
    initial = [p.detach().clone() for stage in stages for p in stage.module.parameters()]
    trainer(stages, batches, job.optimizer.lr)
    moved = [p for stage in stages for p in stage.module.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(initial, moved)), "the reference did not train"
    assert_same_parameters(stages, torch.load(folder.path / "model.pt"))
    assert summary["steps"] == STEPS
