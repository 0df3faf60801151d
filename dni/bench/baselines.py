"""Single-process baselines on the same network, data and seed as a pipeline run.

`plain`: ordinary backprop with PyTorch autograd. `synthetic`: the same stages
and synthesizers stepped one after another in one process, through the very
StageCompute objects the workers use, with no sockets at all
(`dni.coordinator.train.in_process.InProcessGraph`, which `dni bench overhead` runs too).
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from dni.coordinator.data.dataset import Dataset, test_batches, train_batches
from dni.coordinator.jobs.job import Job
from dni.coordinator.train.in_process import InProcessGraph
from dni.spec import Mode

__all__ = ["run_baseline"]


def run_baseline(job: Job, data: Dataset, kind: str) -> dict[str, Any]:
    """A chain job's baseline of `kind` (plain or synthetic) in this process."""
    torch.set_num_threads(os.cpu_count() or 1)
    mode = Mode.BACKPROP if kind == "plain" else Mode.SG
    graph = InProcessGraph(replace(job, mode=mode), tuple(data.input_shape), data.num_classes)
    step_function = _plain_step(graph, job) if kind == "plain" else graph.step
    total = job.total_steps(len(data.train_y))
    eval_every = job.eval_every or job.steps_per_epoch(len(data.train_y))
    evaluations, started = [], time.perf_counter()
    first_step_done: Optional[float] = None
    for step, (_, x, labels) in enumerate(train_batches(data, job.batch_size, job.seed, total), start=1):
        step_function(step, x, labels)
        first_step_done = first_step_done or time.perf_counter()
        if step % eval_every == 0 or step == total:
            (accuracy,) = graph.accuracy(list(test_batches(data, job.eval_batch_size))).values()
            evaluations.append({"step": step, "elapsed": time.perf_counter() - started, "test_accuracy": accuracy})
    wall = time.perf_counter() - started
    return {
        "mode": f"single-process {kind}", "wall_seconds": wall, "samples_per_second": total * job.batch_size / wall,
        "steady_samples_per_second": (total - 1) * job.batch_size / max(1e-9, time.perf_counter() - (first_step_done or started)),
        "test_accuracy": evaluations[-1]["test_accuracy"], "evaluations": evaluations,
    }


def _plain_step(graph: InProcessGraph, job: Job) -> Callable[[int, torch.Tensor, torch.Tensor], None]:
    network = torch.nn.Sequential(*(compute.module for compute in graph.computes))
    optimizer = torch.optim.Adam(network.parameters(), lr=job.optimizer.lr) if job.optimizer.name == "adam" \
        else torch.optim.SGD(network.parameters(), lr=job.optimizer.lr)

    def step(batch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(network(x), labels, reduction="sum").backward()
        optimizer.step()
    return step
