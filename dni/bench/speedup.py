"""`dni bench speedup`: locked backprop vs unlocked DNI on the same workers, with single-process baselines.

Everything is measured side by side in one invocation: same model, data, seed
and machine. Throughput is the steady rate (first to last result, so pipeline
fill is not counted); time-to-accuracy uses the wall clock of the evaluations.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

from dni.bench.baselines import run_baseline
from dni.bench.timeline import plot_scaling, plot_timelines
from dni.bench.torch_pipelining import check_schedule, run_torch_pipeline
from dni.coordinator.jobs.job import Job, job_from_table, load_job
from dni.coordinator.results.folder import read_metrics
from dni.coordinator.train.run import job_data, run_job
from dni.errors import ConfigError
from dni.spec import MODE_NAMES, Mode
from dni.workers.stage.timing import ACTIVITIES, grouped

__all__ = ["EMULATED_FORWARD_MS", "balanced_job", "measure", "parse_lists", "print_report", "run_speedup", "time_to_accuracy"]

EMULATED_FORWARD_MS = 20.0


def balanced_job(stages: int, emulated: bool, iterations: int, data_root: Optional[str]) -> Job:
    """L stages of equal cost with cheap synthesizers; emulated ones sleep instead of computing."""
    stage = {"kind": "dni.bench.stages:balanced", "features": 64 if emulated else 784, "layers": 1 if emulated else 2,
             "delay_ms": EMULATED_FORWARD_MS if emulated else 0.0,
             "synthesizer": {"kind": "mlp", "hidden": 16, "layers": 1}}
    return job_from_table({
        "name": f"balanced-{stages}{'-emulated' if emulated else ''}", "dataset": "mnist", "batch_size": 256,
        "iterations": iterations, "eval_every": iterations, "test_subset": 2000, "window": 4, "threads": 1,
        "optimizer": {"name": "adam", "lr": 1e-3}, "data_root": data_root or "",
        "stages": [dict(stage) for _ in range(stages - 1)] + [{**stage, "classes": 10}],
    })


def measure(job: Job, modes: list[str], targets: list[float], folder: Path, baselines: bool,
            torch_schedules: Sequence[str] = (), microbatches: int = 4) -> dict[str, Any]:
    if baselines:
        for schedule in torch_schedules:
            check_schedule(job, schedule, microbatches)
    results: dict[str, Any] = {}
    spans = {}
    for mode in modes:
        run_folder, summary = run_job(replace(job, mode=Mode(mode), record_spans=True, results=str(folder)), show_progress=False)
        results[mode] = _pipeline_result(run_folder.path, summary, targets)
        spans[mode] = json.loads((run_folder.path / "spans.json").read_text())
    if baselines:
        data = job_data(job)
        for kind in ("plain", "synthetic"):
            baseline = run_baseline(job, data, kind)
            baseline["time_to_accuracy"] = time_to_accuracy(baseline["evaluations"], targets)
            results[baseline["mode"]] = baseline
        for schedule in torch_schedules:
            result = run_torch_pipeline(job, data, schedule, microbatches)
            result["time_to_accuracy"] = time_to_accuracy(result["evaluations"], targets)
            results[result["mode"]] = result
    locked = results.get("backprop")
    speedups = {name: result["steady_samples_per_second"] / locked["steady_samples_per_second"]
                for name, result in results.items() if name != "backprop"} if locked else {}
    if locked and "backprop" in spans and len(spans) > 1:
        step = job.batch_size / locked["steady_samples_per_second"]
        unlocked = next(mode for mode in modes if mode != "backprop")
        plot_timelines([(f"backprop (locked): {locked['steady_samples_per_second']:.0f} samples/s", spans["backprop"]),
                        (f"{unlocked} (unlocked): {results[unlocked]['steady_samples_per_second']:.0f} samples/s", spans[unlocked])],
                       folder / "timeline.png", duration=4 * step)
    return {"job": job.name, "stages": len(job.stages), "batch_size": job.batch_size, "results": results, "speedup": speedups}


def _pipeline_result(run: Path, summary: dict[str, Any], targets: list[float]) -> dict[str, Any]:
    workers = []
    for metrics in summary["worker_metrics"]:
        wall = metrics["wall"]
        fractions = {activity: metrics["time"].get(activity, 0.0) / wall for activity in ACTIVITIES}
        fractions.update({group: seconds / wall for group, seconds in grouped(metrics["time"]).items()})
        fractions["unaccounted"] = 1.0 - sum(fractions[a] for a in ACTIVITIES)
        workers.append({"stage": metrics["stage"], "fractions": fractions, "staleness": metrics["staleness"]})
    return {
        "mode": summary["mode"], "wall_seconds": summary["wall_seconds"], "samples_per_second": summary["samples_per_second"],
        "steady_samples_per_second": summary["steady_samples_per_second"], "test_accuracy": summary["test_accuracy"],
        "time_to_accuracy": time_to_accuracy(read_metrics(run), targets), "workers": workers, "run": str(run),
        "coordinator_cpu_fraction": summary["coordinator_cpu_fraction"],
    }


def time_to_accuracy(evaluations: list[dict[str, Any]], targets: Sequence[float]) -> dict[str, Optional[float]]:
    return {f"{target:.3f}": next((e["elapsed"] for e in evaluations if e["test_accuracy"] >= target), None) for target in targets}


def parse_lists(args) -> tuple[list[str], list[float], list[str], list[int]]:
    """The comma-separated flags, checked before anything runs: a typo should not surface after minutes of measuring."""
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODE_NAMES]
    if unknown:
        raise ConfigError(f"--modes: unknown mode {', '.join(unknown)}; choose from {', '.join(MODE_NAMES)}")
    try:
        targets = [float(target) for target in args.targets.split(",")]
        stage_counts = [int(count) for count in args.stages.split(",")]
    except ValueError as error:
        raise ConfigError(f"--targets takes accuracies like 0.95,0.97 and --stages counts like 2,4,8: {error}") from error
    if any(count < 2 for count in stage_counts):
        raise ConfigError(f"--stages: a pipeline needs at least 2 stages, got {args.stages}")
    return modes, targets, [schedule for schedule in args.torch_schedules.split(",") if schedule], stage_counts


def run_speedup(args) -> dict[str, Any]:
    modes, targets, schedules, stage_counts = parse_lists(args)
    folder = Path(args.results) / f"bench-speedup-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    configurations = []
    if args.model == "balanced-mlp":
        for count in stage_counts:
            emulated = args.emulate == "always" or (args.emulate == "auto" and count > (os.cpu_count() or 1))
            job = balanced_job(count, emulated, args.iterations or 200, args.data_root)
            # baselines compute for real; an emulated stage sleeps a fixed time per call, which micro-batching would multiply
            entry = measure(job, modes, targets, folder / job.name, not (emulated or args.no_baselines), schedules, args.microbatches)
            entry["emulated"] = emulated
            configurations.append(entry)
    else:
        overrides = {"iterations": args.iterations or None, "data_root": args.data_root,
                     "verify_data": False if args.no_verify_data else None}
        job = load_job(args.job, overrides)
        chain = job.topology.chain  # the single-process and torch pipelining baselines take chains only
        if not chain:
            print(f"{job.name} is a graph of stages: no single-process or torch pipelining baselines")
        entry = measure(job, modes, targets, folder / job.name, chain and not args.no_baselines,
                        schedules if chain else [], args.microbatches)
        entry["emulated"] = False
        configurations.append(entry)
    report = {"cores": os.cpu_count(), "modes": modes, "targets": targets, "configurations": configurations,
              "emulated_forward_ms": EMULATED_FORWARD_MS}
    (folder / "bench.json").write_text(json.dumps(report, indent=2))
    points = [{"stages": c["stages"], "emulated": c["emulated"], "speedup": c["speedup"].get("sg", 0.0)} for c in configurations]
    if any(p["speedup"] for p in points):
        plot_scaling(points, folder / "scaling.png")
    print_report(report)
    print(f"\nresults: {folder}")
    return report


def print_report(report: dict[str, Any]) -> None:
    for config in report["configurations"]:
        kind = f"EMULATED ({report['emulated_forward_ms']:.0f} ms forward, {2 * report['emulated_forward_ms']:.0f} ms backward sleep per stage)" \
            if config["emulated"] else "real compute"
        print(f"\n== {config['job']}: {config['stages']} stages, {kind}, {report['cores']} cores")
        targets = [f"{float(t):.0%}" for t in report["targets"]]
        print(f"{'mode':<32} {'samples/s':>10} {'step ms':>8} {'test acc':>9} " + " ".join(f"{'t->' + t:>9}" for t in targets) + f" {'speedup':>8}")
        for name, result in config["results"].items():
            rate = result["steady_samples_per_second"]
            reach = " ".join(f"{(f'{v:.1f}s' if v is not None else '--'):>9}" for v in result["time_to_accuracy"].values())
            speedup = config["speedup"].get(name)
            print(f"{name:<32} {rate:>10.0f} {1000 * config['batch_size'] / rate:>8.1f} {result['test_accuracy']:>9.2%} {reach} "
                  f"{(f'{speedup:.2f}x' if speedup else ''):>8}")
        for name, result in config["results"].items():
            if "coordinator_cpu_fraction" in result:
                print(f"  {name:<10} coordinator: {result['coordinator_cpu_fraction']:6.1%} of one core (feeding, collecting)")
            for worker in result.get("workers", []):
                f = worker["fractions"]
                print(f"  {name:<10} stage {worker['stage']}: compute {f['compute']:6.1%}  wait input {f['wait_input']:6.1%}  "
                      f"wait grad {f['wait_gradient']:6.1%}  transport {f['transport']:6.1%}  other {f['control'] + f['loop'] + f['unaccounted']:6.1%}  "
                      f"staleness {worker['staleness']}")
