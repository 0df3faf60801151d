"""Single-process baselines on the same network, data and seed as a pipeline run.

`plain`: ordinary backprop with PyTorch autograd. `synthetic`: the same stages
and synthesizers stepped one after another in one process, through the very
StageCompute objects the workers use, with no sockets at all. `stage_computes`
and `single_process_step` are that loop, which `dni bench overhead` runs too.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import replace
from typing import Any, Optional

import torch
import torch.nn.functional as F

from dni.coordinator.data.dataset import Dataset, test_batches, train_batches
from dni.coordinator.jobs.job import Job
from dni.spec import Mode
from dni.workers.build.builder import build_stages
from dni.workers.stage.compute import StageCompute, only_input

__all__ = ["run_baseline", "single_process_step", "stage_computes"]


def run_baseline(job: Job, data: Dataset, kind: str) -> dict[str, Any]:
    torch.set_num_threads(os.cpu_count() or 1)
    mode = Mode.BACKPROP if kind == "plain" else Mode.SG
    computes = stage_computes(replace(job, mode=mode), data)
    step_function = _plain_step(computes, job) if kind == "plain" else functools.partial(single_process_step, computes)
    total = job.total_steps(len(data.train_y))
    eval_every = job.eval_every or job.steps_per_epoch(len(data.train_y))
    evaluations, started = [], time.perf_counter()
    first_step_done: Optional[float] = None
    for step, (_, x, labels) in enumerate(train_batches(data, job.batch_size, job.seed, total), start=1):
        step_function(step, x, labels)
        first_step_done = first_step_done or time.perf_counter()
        if step % eval_every == 0 or step == total:
            evaluations.append({"step": step, "elapsed": time.perf_counter() - started,
                                "test_accuracy": _accuracy(computes, data, job.eval_batch_size)})
    wall = time.perf_counter() - started
    return {
        "mode": f"single-process {kind}", "wall_seconds": wall, "samples_per_second": total * job.batch_size / wall,
        "steady_samples_per_second": (total - 1) * job.batch_size / max(1e-9, time.perf_counter() - (first_step_done or started)),
        "test_accuracy": evaluations[-1]["test_accuracy"], "evaluations": evaluations,
    }


def stage_computes(job: Job, data: Dataset) -> list[StageCompute]:
    """The job's stages in this process, built as its workers build them, with a window of one batch."""
    built = build_stages(job.stages, input_shape=data.input_shape, mode=job.mode, num_classes=data.num_classes, seed=job.seed)
    last = len(built) - 1
    return [StageCompute(modules.module, modules.synthesizer, mode=job.mode, optimizer=job.optimizer, first=index == 0,
                         loss=job.loss if index == last else None, num_classes=data.num_classes, name=f"stage {index}")
            for index, modules in enumerate(built)]


def _plain_step(computes: list[StageCompute], job: Job):
    network = torch.nn.Sequential(*(compute.module for compute in computes))
    optimizer = torch.optim.Adam(network.parameters(), lr=job.optimizer.lr) if job.optimizer.name == "adam" \
        else torch.optim.SGD(network.parameters(), lr=job.optimizer.lr)

    def step(batch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(network(x), labels, reduction="sum").backward()
        optimizer.step()
    return step


def single_process_step(computes: list[StageCompute], batch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
    """One step of every stage, as the pipeline's messages would order it: each batch's targets come back before
    the next batch, as in the reference's single script."""
    *hidden, last = computes
    upstream: list[Optional[torch.Tensor]] = []
    for compute in hidden:
        x = compute.forward(batch, x, labels)
        upstream.append(only_input(compute.update_after_forward(batch)))
    upstream.append(only_input(last.train_last(x, labels).upstream))
    for index in reversed(range(len(hidden))):
        target = upstream[index + 1]
        if hidden[index].awaits_target(batch) and target is not None:
            sent = hidden[index].receive_target(batch, target)
            if hidden[index].mode.locked:
                upstream[index] = only_input(sent)


def _accuracy(computes: list[StageCompute], data: Dataset, batch_size: int) -> float:
    correct = 0
    for x, labels in test_batches(data, batch_size):
        for compute in computes:
            x = compute.evaluate(x, labels)
        correct += int((x.argmax(1) == labels).sum())
    return correct / len(data.test_y)
