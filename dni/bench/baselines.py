"""Single-process baselines on the same network, data and seed as a pipeline run.

`plain`: ordinary backprop with PyTorch autograd. `synthetic`: the same stages
and synthesizers stepped one after another in one process, through the very
StageCompute objects the workers use, with no sockets at all.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from dni.coordinator.data import Dataset, test_batches, train_batches
from dni.coordinator.job import Job
from dni.spec import Mode
from dni.spec import StageAssignment
from dni.workers.build import build_stages
from dni.workers.compute import StageCompute
from dni.workers.timing import Timeline

__all__ = ["run_baseline"]


def run_baseline(job: Job, data: Dataset, kind: str) -> dict[str, Any]:
    torch.set_num_threads(os.cpu_count() or 1)
    mode = Mode.BACKPROP if kind == "plain" else Mode.SG
    computes = _stage_computes(replace(job, mode=mode), data)
    step_function = _plain_step(computes, job) if kind == "plain" else _synthetic_step(computes)
    total = job.total_steps(len(data.train_y))
    eval_every = job.eval_every or job.steps_per_epoch(len(data.train_y))
    evaluations, started = [], time.perf_counter()
    first_step_done = None
    for step, (_, x, labels) in enumerate(train_batches(data, job.batch_size, job.seed, total), start=1):
        step_function(step, x, labels)
        first_step_done = first_step_done or time.perf_counter()
        if step % eval_every == 0 or step == total:
            evaluations.append({"step": step, "elapsed": time.perf_counter() - started,
                                "test_accuracy": _accuracy(computes, data, job.eval_batch_size)})
    wall = time.perf_counter() - started
    return {
        "mode": f"single-process {kind}", "wall_seconds": wall, "samples_per_second": total * job.batch_size / wall,
        "steady_samples_per_second": (total - 1) * job.batch_size / max(1e-9, time.perf_counter() - first_step_done),
        "test_accuracy": evaluations[-1]["test_accuracy"], "evaluations": evaluations,
    }


def _stage_computes(job: Job, data: Dataset) -> list[StageCompute]:
    built = build_stages(job.stages, input_shape=data.input_shape, mode=job.mode, num_classes=data.num_classes, seed=job.seed)
    shapes = [tuple(data.input_shape), *(modules.output_shape for modules in built)]
    count = len(job.stages)
    return [StageCompute(StageAssignment(
        job="baseline", index=index, num_stages=count, spec=spec, mode=job.mode, input_shape=shapes[index],
        num_classes=data.num_classes, optimizer=job.optimizer, seed=job.seed, window=1, threads=1, coordinator="inproc://none",
        upstream="inproc://up" if index else None, downstream="inproc://down" if index < count - 1 else None,
    ), modules, Timeline()) for index, (spec, modules) in enumerate(zip(job.stages, built))]


def _plain_step(computes: list[StageCompute], job: Job):
    network = torch.nn.Sequential(*(compute.module for compute in computes))
    optimizer = torch.optim.Adam(network.parameters(), lr=job.optimizer.lr) if job.optimizer.name == "adam" \
        else torch.optim.SGD(network.parameters(), lr=job.optimizer.lr)

    def step(batch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(network(x), labels, reduction="sum").backward()
        optimizer.step()
    return step


def _synthetic_step(computes: list[StageCompute]):
    def step(batch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
        targets = []
        for compute in computes[:-1]:
            x = compute.forward(batch, x, labels)
            targets.append(compute.update_after_forward(batch))
        targets.append(computes[-1].train_last(x, labels).upstream)
        for index, compute in enumerate(computes[:-1]):
            compute.receive_target(batch, targets[index + 1])
    return step


def _accuracy(computes: list[StageCompute], data: Dataset, batch_size: int) -> float:
    correct = 0
    for x, labels in test_batches(data, batch_size):
        for compute in computes:
            x = compute.evaluate(x, labels)
        correct += int((x.argmax(1) == labels).sum())
    return correct / len(data.test_y)
