"""`dni bench speedup --model balanced-towers`: what a graph's independent branches buy, locked and unlocked.

Two towers of equal cost (`dni.bench.stages:balanced`, 784 wide, so either takes the image or the other's output)
and a head that takes their sum, run three ways on the same workers, data and seed: the towers side by side
(a graph: both take the data, the head joins them) in locked `backprop`; the same three modules as a chain
(left -> right -> head) in `backprop`; and the graph in `sg`. Rounds alternate the three, so a noisy machine
disturbs each alike; every round gives the graph's speedup over the chain (both locked: only the branches'
parallelism) and sg's over backprop on the graph (the update-unlocking on top). Two equal branches on two cores
should approach 2x over the chain even locked, less what the head and the coordinator take.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from dni.coordinator.results.plots import save_figure  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402

from dni.coordinator.jobs.job import Job, job_from_table  # noqa: E402
from dni.coordinator.train.run import run_job  # noqa: E402
from dni.spec import Mode  # noqa: E402

__all__ = ["CONFIGURATIONS", "run_towers", "towers_job"]

CONFIGURATIONS = (("graph", "backprop"), ("chain", "backprop"), ("graph", "sg"))


def towers_job(shape: str, iterations: int, data_root: Optional[str]) -> Job:
    """The two balanced towers and their head, side by side (`graph`) or one after the other (`chain`)."""
    tower = {"kind": "dni.bench.stages:balanced", "features": 784, "layers": 2,
             "synthesizer": {"kind": "mlp", "hidden": 16, "layers": 1}}
    head = {"kind": "linear", "features": 10}
    stages = [{"name": "left", "inputs": ["data"], **tower}, {"name": "right", "inputs": ["data"], **tower},
              {"name": "head", "inputs": ["left", "right"], "join": "sum", "loss": "cross_entropy", **head}] \
        if shape == "graph" else [dict(tower), dict(tower), head]
    return job_from_table({
        "name": f"towers-{shape}", "dataset": "mnist", "batch_size": 256, "iterations": iterations,
        "eval_every": iterations, "test_subset": 2000, "window": 4, "threads": 1, "optimizer": {"name": "adam", "lr": 1e-3},
        "data_root": data_root or "", "stages": stages,
    })


def run_towers(args: Any) -> dict[str, Any]:
    folder = Path(args.results) / f"bench-towers-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    iterations = args.iterations or 200
    jobs = {shape: towers_job(shape, iterations, args.data_root) for shape in ("graph", "chain")}
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        rates = {}
        for shape, mode in CONFIGURATIONS:
            job = replace(jobs[shape], mode=Mode(mode), results=str(folder / f"round{number}"),
                          verify_data=not args.no_verify_data)
            _, summary = run_job(job, show_progress=False)
            rates[f"{shape} {mode}"] = summary["steady_samples_per_second"]
        rounds.append(rates)
        print(f"round {number + 1}: " + ", ".join(f"{name} {rate:.0f}/s" for name, rate in rates.items()), flush=True)
    ratios = _ratios(rounds)
    report = {"cores": os.cpu_count(), "iterations": iterations, "rounds": rounds, **ratios}
    (folder / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(rounds, folder / "towers.png")
    for what, values in ratios.values():
        print(f"{what}: {statistics.median(values):.2f}x (rounds {', '.join(f'{value:.2f}' for value in values)})")
    print(f"\nresults: {folder}")
    return report


def _ratios(rounds: list[dict[str, float]]) -> dict[str, tuple[str, list[float]]]:
    """Each speedup as (what over what, its value in every round)."""
    pairs = {"graph_over_chain": ("graph backprop", "chain backprop"), "sg_over_backprop": ("graph sg", "graph backprop")}
    return {name: (f"{faster} / {slower}", [rates[faster] / rates[slower] for rates in rounds])
            for name, (faster, slower) in pairs.items()}


def _plot(rounds: list[dict[str, float]], output: Path) -> Path:
    """Steady samples/s of each configuration in each round, side by side."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    names = list(rounds[0])
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        axes.bar([index + offset * width for index in range(len(rounds))], [rates[name] for rates in rounds], width,
                 label=name)
    axes.set_xticks([index + width * (len(names) - 1) / 2 for index in range(len(rounds))],
                    [f"round {index + 1}" for index in range(len(rounds))])
    axes.set_ylabel("steady samples/s")
    axes.set_title("Two balanced towers: side by side (graph) or one after the other (chain)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower right")
    return save_figure(figure, output)
