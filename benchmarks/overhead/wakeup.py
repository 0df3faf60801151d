"""What a worker's compute costs right after its poll slept, against the same step back to back.

A worker that waits for its next message sleeps in `zmq.Poller.poll`; when the
message comes, its first computation runs on a core whose caches (and, on
some machines, clock) have cooled while it slept, or that another process has
used meanwhile. This times one small training step (the overhead benchmark's
first stage: Linear 784-16, BatchNorm, ReLU, backward, fused Adam; batch 256,
one torch thread) three ways, the median of each:

- back to back: each step starts as the one before ends;
- after a sleep: `time.sleep(--sleep-ms)` before each step, as a poll that waits;
- after a spin: as long, busy-waiting, to tell the sleep from the time gone by.

    python benchmarks/overhead/wakeup.py [--sleep-ms 1] [--steps 2000]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

__all__ = ["main", "small_step", "timed"]


def small_step(batch: int = 256) -> Callable[[], None]:
    """One training step of a small stage, on fixed data (what is timed is the compute, not the data)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 784, generator=generator)
    gradient = torch.randn(batch, 16, generator=generator)
    stage = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())
    optimizer = torch.optim.Adam(stage.parameters(), lr=3e-5, fused=True)

    def step() -> None:
        optimizer.zero_grad()
        stage(x).backward(gradient)
        optimizer.step()
    return step


def timed(step: Callable[[], None], steps: int, pause: Callable[[], None]) -> float:
    """The median microseconds of `step`, each run after `pause`."""
    times = []
    for _ in range(steps):
        pause()
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sleep-ms", type=float, default=1.0, help="the pause before each step (default 1 ms)")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps of each kind (default 2000)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a worker runs
    step, seconds = small_step(), args.sleep_ms / 1000

    def spin() -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass

    for _ in range(200):  # warm-up: the first optimiser steps import and compile
        step()
    back_to_back = timed(step, args.steps, lambda: None)
    after_sleep = timed(step, args.steps, lambda: time.sleep(seconds))
    after_spin = timed(step, args.steps, spin)
    print(f"small step (784-16 Linear+BN+ReLU, batch 256, 1 thread), median of {args.steps}:")
    for label, micros in (("back to back", back_to_back), (f"after a {args.sleep_ms:g} ms sleep", after_sleep),
                          (f"after a {args.sleep_ms:g} ms spin", after_spin)):
        print(f"  {label:<22} {micros:6.0f} us  ({micros / back_to_back:.2f}x)")


if __name__ == "__main__":
    main()
