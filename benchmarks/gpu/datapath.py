"""Where one synthetic-gradient step of a stage spends its time: compute, host<->device copies, the socket.

A stage's step, phase by phase, exactly as a worker runs it: the upstream
activation arrives over a real ZeroMQ hop (ipc, as between local workers) and
is decoded, copied to the device, run forward; the activation is copied back
and sent downstream; the stage updates with its synthesizer's gradient and
sends its input gradient upstream; the target arrives and trains the
synthesizer. Each phase ends with a device synchronisation, so GPU time lands
in the phase that queued it. The copies are timed both ways: through
`workers.devices` (page-locked staging, one host copy) and the way workers
copied before (pageable `.to("cpu")`, and an extra host copy before pinning).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import zmq

from dni.coordinator.jobs.job import Job
from dni.coordinator.jobs.shapes import check_stages
from dni.protocol import Kind, Message, decode, open_socket, receive_frames, send_message
from dni.spec import Mode
from dni.workers.build.builder import build_stage
from dni.workers.stage.compute import StageCompute
from dni.workers.loop.devices import synchronizer, to_device, to_host

__all__ = ["profile_stage", "DATA_SHAPES"]

DATA_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
PHASES = ("compute", "host_to_device", "device_to_host", "socket")
WARMUP_STEPS = 5


def previous_to_host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").numpy()


def previous_to_device(array: np.ndarray, device: str) -> torch.Tensor:
    tensor = torch.from_numpy(array.copy())
    return tensor if device == "cpu" else tensor.pin_memory().to(device, non_blocking=True)


COPIES = {"current": (to_host, to_device), "previous": (previous_to_host, previous_to_device)}


class Hop:
    """One PUSH -> PULL hop over ipc, as between two workers on one host."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.push = open_socket(context, zmq.PUSH)
        self.pull = open_socket(context, zmq.PULL)
        self.pull.bind(address)
        self.push.connect(address)

    def carry(self, message: Message) -> Message:
        send_message(self.push, message)
        return decode(receive_frames(self.pull))


class Clock:
    """Per-phase seconds of one step; a phase ends once the device is idle."""

    def __init__(self, settle: Callable[[], None] | None) -> None:
        self.settle = settle or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.settle()
        self.seconds[phase] += time.perf_counter() - start


def profile_stage(job: Job, index: int, device: str, steps: int) -> dict[str, Any]:
    """Median milliseconds per phase of one sg step of `job`'s stage `index`, for each way of copying."""
    job = replace(job, mode=Mode.SG)
    shapes = check_stages(job, DATA_SHAPES[job.dataset], 10)
    input_shape = shapes[index - 1] if index else DATA_SHAPES[job.dataset]
    result: dict[str, Any] = {"job": job.name, "stage": index, "device": device, "batch_size": job.batch_size,
                              "input_shape": list(input_shape), "output_shape": list(shapes[index]), "steps": steps}
    with tempfile.TemporaryDirectory(prefix="dni-datapath-") as folder:
        context = zmq.Context()
        try:
            hops = {name: Hop(context, f"ipc://{folder}/{name}") for name in ("input", "output", "upstream", "target")}
            runs: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
            for path in ("previous", "current", "previous", "current"):  # alternated, so drift shows between repeats
                runs[path].append(_run(job, index, input_shape, device, steps, hops, COPIES[path]))
        finally:
            context.destroy(linger=0)
    result.update({path: _summary(repeats) for path, repeats in runs.items()})
    return result


def _run(job: Job, index: int, input_shape: tuple[int, ...], device: str, steps: int, hops: dict[str, Hop],
         copies: tuple[Callable, Callable]) -> list[dict[str, float]]:
    compute, output_shape = _stage_compute(job, index, input_shape, device)
    generator = np.random.default_rng(index)
    batches = [(generator.random((job.batch_size, *input_shape), dtype=np.float32),
                generator.integers(0, 10, job.batch_size).astype(np.int64),
                generator.standard_normal((job.batch_size, *output_shape), dtype=np.float32) * 1e-3)
               for _ in range(4)]
    timings = []
    for step in range(WARMUP_STEPS + steps):
        clock = Clock(synchronizer(device))
        _step(compute, step, batches[step % len(batches)], hops, copies, device, clock)
        if step >= WARMUP_STEPS:
            timings.append(dict(clock.seconds))
    return timings


def _stage_compute(job: Job, index: int, input_shape: tuple[int, ...], device: str) -> tuple[StageCompute, tuple[int, ...]]:
    modules = build_stage(job.stages[index], index=index, input_shape=input_shape, mode=job.mode, num_classes=10,
                          seed=job.seed, is_last=False, device=device)
    compute = StageCompute(modules.module, modules.synthesizer, mode=job.mode, optimizer=job.optimizer, first=index == 0,
                           num_classes=10, name=f"stage {index}")
    return compute, modules.output_shape


def _step(compute: StageCompute, batch: int, arrays: tuple[np.ndarray, ...], hops: dict[str, Hop],
          copies: tuple[Callable, Callable], device: str, clock: Clock) -> None:
    send_host, receive_device = copies
    x_host, labels_host, target_host = arrays
    with clock("socket"):
        received = hops["input"].carry(Message(Kind.FORWARD, "profile", batch, batch, 0, {}, {"x": x_host, "labels": labels_host}))
    with clock("host_to_device"):
        x, labels = receive_device(received.tensors["x"], device), receive_device(received.tensors["labels"], device)
    with clock("compute"):
        h = compute.forward(batch, x, labels)
    with clock("device_to_host"):
        h_host = send_host(h)
    with clock("socket"):
        hops["output"].carry(Message(Kind.FORWARD, "profile", batch, batch, 1, {}, {"x": h_host, "labels": received.tensors["labels"]}))
    with clock("compute"):
        upstream = compute.update_after_forward(batch)
    if upstream is not None:
        with clock("device_to_host"):
            upstream_host = send_host(upstream)
        with clock("socket"):
            hops["upstream"].carry(Message(Kind.BACKWARD, "profile", batch, batch, 1, {}, {"target": upstream_host}))
    with clock("socket"):
        target_message = hops["target"].carry(Message(Kind.BACKWARD, "profile", batch, batch, 2, {}, {"target": target_host}))
    with clock("host_to_device"):
        target = receive_device(target_message.tensors["target"], device)
    with clock("compute"):
        compute.receive_target(batch, target)


def _summary(repeats: list[list[dict[str, float]]]) -> dict[str, Any]:
    """Medians over every timed step; `step_ms_repeats` gives each repeat's own median, the spread to compare against."""
    timings = [timing for repeat in repeats for timing in repeat]
    summary: dict[str, Any] = {f"{phase}_ms": 1000 * statistics.median(t.get(phase, 0.0) for t in timings) for phase in PHASES}
    summary["step_ms"] = 1000 * statistics.median(sum(t.values()) for t in timings)
    summary["step_ms_repeats"] = [1000 * statistics.median(sum(t.values()) for t in repeat) for repeat in repeats]
    return summary
