"""`dni bench speedup --link-delay-ms 0,1,5,20,50`: locked and unlocked training over an emulated slow link.

Every data hop, the coordinator's included, is held `link_delay_ms` in its
sender's queue (`dni.protocol.linkdelay`), so it needs no traffic shaping
in the kernel; every row and report says the delay is emulated. Locked backprop pays
2(L-1) delays per step; the unlocked modes pay in how stale their targets are
and in how far their window lets them run ahead of them.

Every run of a sweep uses the same worker processes (a pool started once; each
run configures them afresh), so a run costs its training and a second or two,
not a worker start-up. A run stops when it reaches the highest target accuracy
(`stop_at_accuracy`) or at its cap: `time_cap`, and with a `budget` also its
share of the time left (by its job's weight), so a sweep takes a predictable
time and a run that finishes early leaves its time to the later ones, which
have the larger delays. The locked reference runs come first and are held to
`time_cap` only, since every projection rests on them.

Locked backprop computes the same updates whatever the delay. With
`project_seconds`, only its run at the first delay trains to the target; at
the other delays it trains that long for its steady rate, and its time to a
target is projected as steps to the target (first run) x batch size / steady
rate, marked "projected". sg and cdni are always measured: the delay changes
how stale their synthesizers' targets are, and so what they learn.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from dni.bench.linkdelay_report import plot_link_delay, print_link_delay, verdicts
from dni.bench.speedup import balanced_job, parse_lists, time_to_accuracy
from dni.coordinator.data.dataset import Dataset
from dni.coordinator.jobs.job import Job, load_job
from dni.coordinator.pools.launcher import LocalWorkers
from dni.coordinator.results.folder import read_metrics
from dni.coordinator.train.run import job_data, run_job
from dni.errors import ConfigError, DniError
from dni.files import write_text_atomically
from dni.protocol.linkdelay import describe
from dni.spec import Mode, check_link_delay

__all__ = ["NOT_DELAYED", "Planned", "Runner", "Sweep", "parse_delays", "plan", "project", "run_link_delay", "run_sweep",
           "save_report", "steps_to_accuracy"]

log = logging.getLogger("dni.bench")
START_UP_GUESS = 5.0  # seconds a run costs beyond its training, until a run has measured it
LEAST_RUN_SECONDS = 3  # a measured run offered less than this is skipped, saying why
NOT_DELAYED = {
    "torch GPipe / 1F1B": "not run: they talk over torch.distributed (gloo), whose sends this delay queue cannot hold; "
                          "delaying them would mean patching torch's point-to-point ops",
    "single-process baselines": "not run: one process has no link to delay",
}


@dataclass(frozen=True)
class Sweep:
    """What to run (every mode of every job at every delay) and how long each run may take."""
    delays: tuple[float, ...]
    modes: tuple[str, ...]
    targets: tuple[float, ...]
    time_cap: int  # seconds: the most one measured run trains
    budget: float = 0.0  # seconds for the whole sweep, shared among the runs still to go (0: the caps only)
    project_seconds: int = 0  # > 0: locked runs past the first delay train this long; their time to target is projected
    weights: Mapping[str, float] = field(default_factory=dict)  # a job's runs' share of the budget by its name (default 1)

    def weight(self, run: "Planned") -> float:
        """A run's share of the budget against the others': its job's weight."""
        return self.weights.get(run.job.name, 1.0)

    def __post_init__(self) -> None:
        if self.time_cap < 1 or self.budget < 0 or self.project_seconds < 0:
            raise ConfigError(f"a sweep needs --time-cap of 1 s or more and no negative --budget or --project-backprop, "
                              f"got {self.time_cap}, {self.budget:g}, {self.project_seconds}")


@dataclass(frozen=True)
class Planned:
    """One run of a sweep."""
    job: Job
    mode: str
    delay: float
    projected: bool = False
    reference: bool = False  # the locked run at the first delay, trained to the target


def plan(jobs: Sequence[Job], sweep: Sweep) -> list[Planned]:
    """The runs in order: each job's locked reference, the projected locked runs, then delay by delay (larger
    delays last, so they inherit the time that earlier runs leave)."""
    delays = sorted(sweep.delays)
    locked = "backprop" in sweep.modes
    projecting = locked and sweep.project_seconds > 0
    runs = [Planned(job, "backprop", delays[0], reference=True) for job in jobs if locked]
    if projecting:
        runs += [Planned(job, "backprop", delay, projected=True) for job in jobs for delay in delays[1:]]
    for delay in delays:
        for job in jobs:
            runs += [Planned(job, mode, delay) for mode in sweep.modes
                     if not (mode == "backprop" and (delay == delays[0] or projecting))]
    return runs


def steps_to_accuracy(evaluations: list[dict[str, Any]], targets: Sequence[float]) -> dict[str, Optional[int]]:
    return {f"{target:.3f}": next((e["step"] for e in evaluations if e["test_accuracy"] >= target), None) for target in targets}


def project(rows: list[dict[str, Any]]) -> None:
    """Fill in each projected row's time to target from its model's reference run: its steps to the target at
    this row's steady rate. The reference row gets the same projection of itself (`projection_check`), to set
    beside what it measured."""
    for row in rows:
        if row.get("how") != "projected" and not row.get("reference"):
            continue
        reference = next((r for r in rows if r["model"] == row["model"] and r.get("reference") and "steps" in r), None)
        if reference is None or not row.get("steady_samples_per_second"):
            continue  # no reference to project from, or a run that failed or got one result
        projected = {target: steps * row["batch_size"] / row["steady_samples_per_second"] if steps else None
                     for target, steps in reference["steps_to_accuracy"].items()}
        if row.get("reference"):
            row["projection_check"] = projected
        else:
            row.update(time_to_accuracy=projected, steps_to_accuracy=reference["steps_to_accuracy"],
                       projected_from_delay_ms=reference["delay_ms"])


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's steady rate over locked backprop's, same model and delay."""
    locked = {(r["model"], r["delay_ms"]): r["steady_samples_per_second"] for r in rows
              if r["mode"] == "backprop" and r.get("steady_samples_per_second")}
    for row in rows:
        rate = locked.get((row["model"], row["delay_ms"]))
        if rate and row.get("steady_samples_per_second"):
            row["speedup"] = row["steady_samples_per_second"] / rate


class Runner:
    """Runs planned runs on one pool of workers, each within its cap, and turns each into a row."""

    def __init__(self, sweep: Sweep, runs: Path, pool: LocalWorkers) -> None:
        self.sweep = sweep
        self.runs = runs
        self.pool = pool
        self.deadline = time.monotonic() + sweep.budget if sweep.budget else None
        self.overhead = START_UP_GUESS
        self.datasets: dict[str, Dataset] = {}  # each job's data, loaded for its first run

    def cap(self, run: Planned, ahead: Sequence[Planned]) -> int:
        """Whole seconds `run` may train (0: none left); `ahead` is this run and every one after it."""
        if self.deadline is None:
            return self.sweep.project_seconds if run.projected else self.sweep.time_cap
        remaining = self.deadline - time.monotonic()
        if run.projected:
            return self.sweep.project_seconds if remaining >= self.overhead + self.sweep.project_seconds else 0
        fixed = self.overhead * len(ahead) + self.sweep.project_seconds * sum(r.projected for r in ahead)
        if run.reference:  # every projection rests on it: it is not held to a share, only to the cap
            share = remaining - fixed
        else:
            shared = [r for r in ahead if not (r.projected or r.reference)]
            share = (remaining - fixed) * self.sweep.weight(run) / sum(self.sweep.weight(r) for r in shared)
        seconds = int(min(self.sweep.time_cap, share))
        return seconds if seconds >= LEAST_RUN_SECONDS else 0

    def run(self, run: Planned, ahead: Sequence[Planned]) -> dict[str, Any]:
        row: dict[str, Any] = {"model": run.job.name, "stages": len(run.job.stages), "batch_size": run.job.batch_size,
                               "delay_ms": run.delay, "mode": run.mode, "link": describe(run.delay),
                               "how": "projected" if run.projected else "measured", "reference": run.reference}
        cap = self.cap(run, ahead)
        if not cap:
            left = self.deadline - time.monotonic() if self.deadline else 0.0
            return {**row, "skipped": f"{left:.0f}s of the {self.sweep.budget:.0f}s budget left for {len(ahead)} runs"}
        try:
            row.update(self._train(run, cap))
        except DniError as error:  # one failed run must not cost the others their time
            log.error("%s %s at %g ms failed: %s", run.job.name, run.mode, run.delay, error)
            row["error"] = f"{type(error).__name__}: {error}"
        _say(row)
        return row

    def _train(self, run: Planned, cap: int) -> dict[str, Any]:
        job = replace(run.job, mode=Mode(run.mode), link_delay_ms=run.delay, time_limit=cap, checkpoint_every=0,
                      stop_at_accuracy=0.0 if run.projected else max(self.sweep.targets),
                      results=str(self.runs / run.job.name), rejoin_seconds=0)
        if job.name not in self.datasets:
            self.datasets[job.name] = job_data(job)
        self._revive()
        started = time.monotonic()
        folder, summary = run_job(job, show_progress=False, pool=self.pool, data=self.datasets[job.name])
        self.overhead = max(1.0, time.monotonic() - started - summary["wall_seconds"])
        records = read_metrics(folder.path)
        metrics = summary["worker_metrics"]
        stopped = "accuracy" if summary["stopped_at_accuracy"] else "time_limit" if summary["stopped_at_time_limit"] else None
        return {
            "time_cap": cap, "steps": summary["steps"], "wall_seconds": summary["wall_seconds"], "stopped": stopped,
            "steady_samples_per_second": summary["steady_samples_per_second"], "test_accuracy": summary["test_accuracy"],
            "best_test_accuracy": summary["best_test_accuracy"], "time_to_accuracy": time_to_accuracy(records, self.sweep.targets),
            "steps_to_accuracy": steps_to_accuracy(records, self.sweep.targets),
            "link_late_max_ms": max([summary["feed_link"]["late_max_ms"], *(m["link"]["late_max_ms"] for m in metrics)]),
            "staleness": [m["staleness"] for m in metrics], "devices": [w["device"] for w in summary["workers"]],
            "run": str(folder.path),
        }

    def _revive(self) -> None:
        """A pool worker that died is started again at its address, so the next run does not wait for it."""
        for stage, process in enumerate(self.pool.processes):
            if process.poll() is not None:
                log.warning("pool worker %d exited with %s: starting it again", stage, process.returncode)
                self.pool.restart(stage)


def run_sweep(jobs: Sequence[Job], sweep: Sweep, runs: Path) -> dict[str, Any]:
    """Every planned run on one pool of workers, their run folders under `runs`; returns the report."""
    planned = plan(jobs, sweep)
    started = time.monotonic()
    pool = LocalWorkers(max(len(job.stages) for job in jobs), once=False)
    try:
        pool.start()
        runner = Runner(sweep, runs, pool)
        rows = [runner.run(run, planned[index:]) for index, run in enumerate(planned)]
    finally:
        pool.stop(grace=0.0)
    project(rows)
    _add_speedups(rows)
    return {
        "link": "emulated: every data message (activations, targets, batches from and results to the coordinator) is held "
                "link_delay_ms in its sender's queue; control messages and heartbeats are not delayed",
        "delays_ms": sorted(sweep.delays), "modes": list(sweep.modes), "targets": list(sweep.targets),
        "time_cap": sweep.time_cap, "budget": sweep.budget, "project_seconds": sweep.project_seconds,
        "wall_seconds": time.monotonic() - started, "not_run": NOT_DELAYED,
        "models": [{"job": job.name, "stages": len(job.stages), "batch_size": job.batch_size, "window": job.window,
                    "eval_every": job.eval_every, "devices": sorted({stage.device for stage in job.stages})} for job in jobs],
        "rows": rows, "verdicts": [verdict for target in sweep.targets for verdict in verdicts(rows, target)],
    }


def save_report(report: dict[str, Any], folder: Path) -> None:
    """The sweep's one table (link-delay.json) and one plot (link-delay.png, for the first target)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / "link-delay.json", json.dumps(report, indent=2))
    plot_link_delay(report["rows"], report["targets"][0], folder / "link-delay.png")


def parse_delays(text: str) -> tuple[float, ...]:
    """--link-delay-ms 0,1,5,20,50, checked before anything runs."""
    try:
        delays = tuple(check_link_delay(float(part)) for part in text.split(","))
    except (ValueError, ConfigError) as error:
        raise ConfigError(f"--link-delay-ms takes milliseconds like 0,1,5,20,50: {error}") from error
    if len(set(delays)) != len(delays):
        raise ConfigError(f"--link-delay-ms lists a delay twice: {text}")
    return delays


def run_link_delay(args) -> dict[str, Any]:
    """`dni bench speedup --link-delay-ms ...`: the sweep over the job, or the balanced model at each --stages count."""
    modes, targets, _, stage_counts = parse_lists(args)
    sweep = Sweep(parse_delays(args.link_delay_ms), tuple(modes), tuple(targets), args.time_cap, args.budget,
                  args.project_backprop)
    if args.model == "balanced-mlp":
        jobs = [balanced_job(count, args.emulate == "always" or (args.emulate == "auto" and count > (os.cpu_count() or 1)),
                             args.iterations or 200, args.data_root) for count in stage_counts]
        jobs = [replace(job, eval_every=args.eval_every or max(1, job.iterations // 10)) for job in jobs]
    else:
        overrides = {"iterations": args.iterations or None, "data_root": args.data_root, "eval_every": args.eval_every or None,
                     "verify_data": False if args.no_verify_data else None}
        jobs = [load_job(args.job, overrides)]
    folder = Path(args.results) / f"bench-speedup-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_sweep(jobs, sweep, folder)
    save_report(report, folder)
    print_link_delay(report)
    print(f"\nresults: {folder}")
    return report


def _say(row: dict[str, Any]) -> None:
    what = f"{row['model']} {row['mode']} at {row['delay_ms']:g} ms"
    if "steps" in row:
        log.info("%s: %d steps, %.0f samples/s, test accuracy %.2f%%", what, row["steps"], row["steady_samples_per_second"],
                 100 * row["test_accuracy"])
    else:
        log.warning("%s: %s", what, row.get("skipped") or row.get("error"))
