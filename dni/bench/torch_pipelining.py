"""PyTorch's own pipeline parallelism on the same stages: `torch.distributed.pipelining`.

GPipe and 1F1B split every batch into micro-batches so that stages overlap, but
stay update-locked: each weight update waits for the true gradient of the whole
batch. Beside our locked and unlocked pipelines this shows what micro-batching
alone buys. As with our workers there is one process per stage with one torch
thread; they talk over gloo on loopback tcp. Every rank builds the stages with
`build_stage` (same weights for the same seed) and reads the batches in the same
order, so only activations and gradients cross between ranks.
"""
from __future__ import annotations

import multiprocessing
import queue
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from dni.coordinator.data.dataset import Dataset, test_batches, train_batches
from dni.coordinator.jobs.job import Job
from dni.coordinator.train.run import job_data
from dni.errors import ConfigError
from dni.protocol import free_port_block
from dni.spec import Mode
from dni.workers.build.builder import build_stages
from dni.workers.stage.optimizers import make_optimizer

__all__ = ["RANK_TIMEOUT", "SCHEDULES", "SCHEDULE_NAMES", "UnsupportedPipeline", "check_schedule", "run_torch_pipeline"]

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
SCHEDULE_NAMES = {"gpipe": "GPipe", "1f1b": "1F1B"}
RANK_TIMEOUT = 900.0


class UnsupportedPipeline(ConfigError):
    """This job cannot be expressed as a torch pipelining run."""


def run_torch_pipeline(job: Job, data: Dataset, schedule: str, microbatches: int) -> dict[str, Any]:
    """Train `job` with a torch pipelining schedule, one spawned process per stage.

    At each evaluation point every rank saves its weights; they are evaluated here
    afterwards: the ranks' clocks count training and those saves, not the evaluation.
    """
    check_schedule(job, schedule, microbatches)
    modules, _ = _stages(job, data)
    if any(getattr(module, "wants_labels", False) for module in modules):
        raise UnsupportedPipeline("a stage takes the labels as input, which torch pipelining cannot hand to middle stages")
    eval_sets = test_batches(data, job.eval_batch_size)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port_block(1)
    with tempfile.TemporaryDirectory(prefix="dni-torch-pipe-") as folder:
        ranks = [context.Process(target=_train_rank, args=(rank, job, schedule, microbatches, port, folder, results), daemon=True)
                 for rank in range(len(job.stages))]
        for process in ranks:
            process.start()
        try:
            clocks = _collect(ranks, results)
        finally:
            for process in ranks:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
        started = min(clock["started"] for clock in clocks)
        evaluations = [{"step": step, "elapsed": max(clock["marks"][index] for clock in clocks) - started,
                        "test_accuracy": _test_accuracy(modules, eval_sets, Path(folder), step)}
                       for index, step in enumerate(_evaluation_steps(job, data))]
    wall = max(clock["last"] for clock in clocks) - started
    first, last = clocks[-1]["first"], clocks[-1]["last"]
    steps = job.total_steps(len(data.train_y))
    return {
        "mode": f"torch {SCHEDULE_NAMES[schedule]} ({microbatches} micro-batches)", "wall_seconds": wall,
        "samples_per_second": steps * job.batch_size / wall,
        "steady_samples_per_second": (steps - 1) * job.batch_size / max(1e-9, last - first),
        "test_accuracy": evaluations[-1]["test_accuracy"], "evaluations": evaluations,
    }


def _evaluation_steps(job: Job, data: Dataset) -> list[int]:
    """The steps after which the pipeline runs evaluate too: every `eval_every` and the last."""
    total = job.total_steps(len(data.train_y))
    every = job.eval_every or job.steps_per_epoch(len(data.train_y))
    return [step for step in range(1, total + 1) if step % every == 0 or step == total]


def _collect(ranks: list, results) -> list[dict[str, Any]]:
    """Each rank's clock readings, in rank order; a rank that dies fails the run at once."""
    timings: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + RANK_TIMEOUT
    while len(timings) < len(ranks):
        try:
            rank, timing = results.get(timeout=1.0)
            timings[rank] = timing
        except queue.Empty:
            failed = [rank for rank, process in enumerate(ranks) if process.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"torch pipelining rank(s) {failed or 'all'} failed or timed out; see their output above") from None
    return [timings[rank] for rank in range(len(ranks))]


def check_schedule(job: Job, schedule: str, microbatches: int) -> None:
    """Whether `schedule` can run `job` at all; checked before anything is measured."""
    if schedule not in SCHEDULES:
        raise UnsupportedPipeline(f"unknown torch schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if microbatches < 1 or job.batch_size % microbatches:
        raise UnsupportedPipeline(f"batch size {job.batch_size} does not split into {microbatches} micro-batches")
    if schedule == "1f1b" and microbatches < len(job.stages):
        raise UnsupportedPipeline(f"1F1B needs at least as many micro-batches as stages ({len(job.stages)})")


def _stages(job: Job, data: Dataset) -> tuple[list[nn.Module], list[tuple[int, ...]]]:
    """Every stage's module, built as the workers build them, and the per-example shapes between them."""
    built = build_stages(job.stages, input_shape=data.input_shape, mode=Mode.BACKPROP, num_classes=data.num_classes, seed=job.seed)
    return [modules.module for modules in built], [tuple(data.input_shape), *(tuple(modules.output_shape) for modules in built)]


def _train_rank(rank: int, job: Job, schedule: str, microbatches: int, port: int, folder: str, results) -> None:
    torch.set_num_threads(job.threads_per_worker())
    count = len(job.stages)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=count)
    try:
        data = job_data(job)
        modules, shapes = _stages(job, data)
        module = modules[rank]
        micro = job.batch_size // microbatches
        # shapes agreed up front; an input that requires grad is one whose gradient goes back upstream
        stage = PipelineStage(module, rank, count, torch.device("cpu"),
                              input_args=(torch.empty(micro, *shapes[rank], requires_grad=rank > 0),),
                              output_args=(torch.empty(micro, *shapes[rank + 1], requires_grad=True),))
        pipeline = SCHEDULES[schedule](stage, microbatches, loss_fn=lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum"),
                                        scale_grads=False)  # summed over the batch, as every other row
        optimizer = make_optimizer(job.optimizer, module.parameters())
        evaluate_after = set(_evaluation_steps(job, data))
        clock: dict[str, Any] = {"started": time.perf_counter(), "first": None, "marks": []}
        batches = train_batches(data, job.batch_size, job.seed, job.total_steps(len(data.train_y)))
        for step, (_, x, labels) in enumerate(batches, start=1):
            optimizer.zero_grad(set_to_none=True)
            if rank == 0:
                pipeline.step(x)
            elif rank == count - 1:
                pipeline.step(target=labels)
            else:
                pipeline.step()
            optimizer.step()
            clock["first"] = clock["first"] or time.perf_counter()
            if step in evaluate_after:
                clock["marks"].append(time.perf_counter())
                torch.save(module.state_dict(), _snapshot(Path(folder), step, rank))
        clock["last"] = time.perf_counter()  # perf_counter is one monotonic clock for every process on a host
        results.put((rank, clock))
    finally:
        dist.destroy_process_group()


def _snapshot(folder: Path, step: int, rank: int) -> Path:
    return folder / f"step{step}-stage{rank}.pt"


def _test_accuracy(modules: list[nn.Module], eval_sets: list[tuple[torch.Tensor, torch.Tensor]], folder: Path, step: int) -> float:
    """The test accuracy of the ranks' weights after `step`, loaded into `modules`."""
    for rank, module in enumerate(modules):
        module.load_state_dict(torch.load(_snapshot(folder, step, rank), weights_only=True))
        module.eval()
    network = nn.Sequential(*modules)
    with torch.no_grad():
        correct = sum(int((network(x).argmax(1) == labels).sum()) for x, labels in eval_sets)
    return correct / sum(len(labels) for _, labels in eval_sets)
