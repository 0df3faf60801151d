"""`dni bench overhead`: what dni's own machinery costs per step, against a single process doing the same arithmetic.

The reference topology (784-W-W-10, Linear+BN+ReLU, synthesizers of two
S-unit layers) runs as a three-worker pipeline and as a single-process loop
built from the very `StageCompute` objects the workers use, stage after stage
in one thread, so both compute the same thing. With W = S = 16 compute is
negligible and the ratio measures the machinery; at the reference sizes
(256/1024) it shows what the pipeline buys on this machine's cores.

Runs alternate (single, pipeline, single, ...) on one pool of workers and the
medians are reported, since a shared machine's speed drifts between runs.
Each worker's time per step is split by activity from its timeline; with
`--profile` one more run per mode puts every worker (and this process, the
coordinator) under cProfile and reports the hottest functions in microseconds
per step. The per-message cost of the worker loop is its time neither computing
nor waiting (receiving, decoding, checking, copying, encoding, sending, control
and the loop itself) divided by the messages it took in and sent.
"""
from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from dni.bench.overhead_plot import plot_overhead
from dni.coordinator.data.dataset import Dataset, train_batches
from dni.coordinator.jobs.job import Job, job_from_table
from dni.coordinator.pools.launcher import LocalWorkers
from dni.coordinator.train.in_process import InProcessGraph
from dni.coordinator.train.run import job_data, run_job
from dni.errors import ConfigError
from dni.spec import MODE_NAMES

__all__ = ["COMPUTE", "WAITING", "breakdown", "overhead_job", "run_overhead", "single_process_rate"]

COMPUTE = ("forward", "synthetic", "backward", "synthesizer", "optimizer")
WAITING = ("wait_input", "wait_gradient", "wait_send")
WARM_UP = 50  # single-process steps before the clock starts (the first optimiser step imports torch._dynamo)


def overhead_job(width: int, synthesizer_width: int, mode: str, steps: int, window: int, data_root: Optional[str],
                 verify_data: bool, profile: bool = False) -> Job:
    """The reference topology at the given widths, one torch thread per worker, one evaluation at the end."""
    hidden = {"kind": "linear_bn_relu", "features": width,
              "synthesizer": {"kind": "mlp", "hidden": synthesizer_width, "layers": 2}}
    table: dict[str, Any] = {
        "name": f"overhead-{width}-{synthesizer_width}", "dataset": "mnist", "mode": mode, "batch_size": 256,
        "iterations": steps, "eval_every": steps, "test_subset": 1000, "window": window, "threads": 1,
        "checkpoint_every": 0, "verify_data": verify_data, "data_root": data_root or "",
        "optimizer": {"name": "adam", "lr": 3e-5}, "stages": [dict(hidden), dict(hidden), {"kind": "linear", "features": 10}],
    }
    if profile:
        table["profile"] = True
    return job_from_table(table)


def single_process_rate(job: Job, data: Dataset, threads: int) -> float:
    """Steps per second of the same stages stepped one after another in this process (window 1: each batch's
    targets come back before the next batch, as in the reference's single script)."""
    torch.set_num_threads(threads)
    graph = InProcessGraph(job, tuple(data.input_shape), data.num_classes)
    batches = list(train_batches(data, job.batch_size, job.seed, job.iterations + WARM_UP))
    for batch, (_, x, labels) in enumerate(batches[:WARM_UP]):
        graph.step(batch, x, labels)
    started = time.perf_counter()
    for batch, (_, x, labels) in enumerate(batches[WARM_UP:], start=WARM_UP):
        graph.step(batch, x, labels)
    return job.iterations / (time.perf_counter() - started)


def breakdown(metrics: dict[str, Any]) -> dict[str, Any]:
    """One worker's time per step by activity (microseconds), and its machinery per message handled."""
    steps = max(1, int(metrics["steps"]))
    per_step = {activity: 1e6 * seconds / steps for activity, seconds in metrics["time"].items()}
    compute = sum(per_step.get(activity, 0.0) for activity in COMPUTE)
    waiting = sum(per_step.get(activity, 0.0) for activity in WAITING)
    machinery = sum(per_step.values()) - compute - waiting
    messages = sum(count for name, count in metrics["messages"].items() if name.startswith(("sent_", "received_"))) / steps
    return {"stage": metrics["stage"], "us_per_step": per_step, "compute_us": compute, "waiting_us": waiting,
            "cpu_us": 1e6 * metrics.get("cpu_seconds", 0.0) / steps,
            "machinery_us": machinery, "messages_per_step": messages,
            "us_per_message": machinery / messages if messages else 0.0, "profile": metrics.get("profile", [])}


def _pipeline_run(job: Job, data: Dataset, pool: LocalWorkers, folder: Path, profile: bool = False) -> dict[str, Any]:
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    try:
        _, summary = run_job(replace(job, results=str(folder)), show_progress=False, pool=pool, data=data)
    finally:
        if profiler:
            profiler.disable()
    steps = summary["steps"]
    workers = [breakdown(metrics) for metrics in summary["worker_metrics"]]
    coordinator = 1e6 * summary["coordinator_cpu_fraction"] * summary["wall_seconds"] / steps
    result = {
        "steps_per_second": summary["steady_samples_per_second"] / job.batch_size,
        "coordinator_cpu_us_per_step": coordinator, "cpu_us_per_step": coordinator + sum(w["cpu_us"] for w in workers),
        "workers": workers, "test_accuracy": summary["test_accuracy"],
    }
    if profiler:
        result["coordinator_profile"] = _top(profiler, steps)
    return result


def _top(profiler: cProfile.Profile, steps: int, count: int = 25) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = [{"function": f"{name} ({os.path.basename(path)}:{line})" if path != "~" else name,
             "calls_per_step": calls / steps, "own_us": 1e6 * own / steps, "cumulative_us": 1e6 * cumulative / steps}
            for (path, line, name), (_, calls, own, cumulative, _) in stats.items()]
    return sorted(rows, key=lambda row: row["own_us"], reverse=True)[:count]


def _measure_mode(job: Job, data: Dataset, pool: LocalWorkers, folder: Path, repeats: int, threads: int,
                 profile: bool) -> dict[str, Any]:
    """Alternating single-process and pipeline runs of one mode; medians, their ratio, and each run."""
    singles, pipelines = [], []
    for _ in range(repeats):
        singles.append(single_process_rate(job, data, threads))
        pipelines.append(_pipeline_run(job, data, pool, folder))
    median = statistics.median(run["steps_per_second"] for run in pipelines)
    typical = min(pipelines, key=lambda run: abs(run["steps_per_second"] - median))
    single = statistics.median(singles)
    result = {
        "mode": job.mode.value, "single_steps_per_second": single, "pipeline_steps_per_second": median,
        "ratio": median / single, "single_runs": singles, "pipeline_runs": [run["steps_per_second"] for run in pipelines],
        "coordinator_cpu_us_per_step": typical["coordinator_cpu_us_per_step"], "workers": typical["workers"],
        "cpu_us_per_step": typical["cpu_us_per_step"],
        "single_step_us": 1e6 / single,
    }
    if profile:
        profiled = _pipeline_run(replace(job, profile=True), data, pool, folder, profile=True)
        result["profile"] = {"workers": [{"stage": worker["stage"], "top": worker["profile"]} for worker in profiled["workers"]],
                             "coordinator": profiled["coordinator_profile"],
                             "steps_per_second_under_cprofile": profiled["steps_per_second"]}
    return result


def run_overhead(args: Any) -> dict[str, Any]:
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODE_NAMES]
    if unknown or not modes:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown) or '(none)'}; known: {', '.join(MODE_NAMES)}")
    folder = Path(args.results) / f"bench-overhead-{args.width}-{args.synthesizer_width}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [overhead_job(args.width, args.synthesizer_width, mode, args.steps, args.window, args.data_root,
                         not args.no_verify_data) for mode in modes]
    data = job_data(jobs[0])
    results = []
    with LocalWorkers(len(jobs[0].stages), once=False) as pool:
        for job in jobs:
            results.append(_measure_mode(job, data, pool, folder / "runs", args.repeats, args.single_threads, args.profile))
            print(_row(results[-1]), flush=True)
    report = {"width": args.width, "synthesizer_width": args.synthesizer_width, "steps": args.steps, "window": args.window,
              "repeats": args.repeats, "single_process_threads": args.single_threads, "worker_threads": 1,
              "cores": os.cpu_count(), "torch": torch.__version__, "results": results}
    (folder / "overhead.json").write_text(json.dumps(report, indent=2))
    _print_report(report)
    print(f"results: {folder / 'overhead.json'}, {plot_overhead(report, folder / 'overhead.png')}")
    return report


def _row(result: dict[str, Any]) -> str:
    return (f"{result['mode']:<9} single {result['single_steps_per_second']:7.1f} steps/s   pipeline "
            f"{result['pipeline_steps_per_second']:7.1f} steps/s   ratio {result['ratio']:.2f}x")


def _print_report(report: dict[str, Any]) -> None:
    print(f"\nReference topology 784-{report['width']}-{report['width']}-10, synthesizers of two {report['synthesizer_width']}"
          f"-unit layers, batch 256, {report['steps']} steps, window {report['window']}, medians of {report['repeats']}; "
          f"single process: {report['single_process_threads']} thread(s); workers: 1 thread each, {report['cores']} cores")
    for result in report["results"]:
        print(_row(result))
        print(f"  CPU per step: {result['cpu_us_per_step']:7.0f} us in all processes (coordinator "
              f"{result['coordinator_cpu_us_per_step']:.0f}) against {result['single_step_us']:.0f} us for the single-process step")
        for worker in result["workers"]:
            parts = "  ".join(f"{activity} {us:.0f}" for activity, us in worker["us_per_step"].items() if us >= 1)
            print(f"  stage {worker['stage']}: compute {worker['compute_us']:6.0f}  machinery {worker['machinery_us']:6.0f}  "
                  f"waiting {worker['waiting_us']:6.0f} us/step (CPU {worker['cpu_us']:.0f}); {worker['us_per_message']:5.0f} us per message "
                  f"({worker['messages_per_step']:.0f}/step)\n    {parts}")
        for worker in result.get("profile", {}).get("workers", []):
            top = ", ".join(f"{row['function']} {row['own_us']:.0f}" for row in worker["top"][:6])
            print(f"  cProfile stage {worker['stage']} (own us/step): {top}")
        if "profile" in result:
            top = ", ".join(f"{row['function']} {row['own_us']:.0f}" for row in result["profile"]["coordinator"][:6])
            print(f"  cProfile coordinator (own us/step): {top}")
