"""The link-delay sweep: reference MNIST and the balanced model at 0-50 ms per hop, in one command that fits 8 minutes.

    python benchmarks/linkdelay/run.py --out DIR                       # GPU machine: <= 8 minutes, every stage on cuda:0
    python benchmarks/linkdelay/run.py --out DIR --quick --device cpu --data-root ../shared/datasets   # anywhere: ~1 min

Runs `dni bench speedup --link-delay-ms` (dni/bench/linkdelay.py) on
two models at once, so both share one pool of workers and one budget: the
reference MNIST network (coordinator/jobs/mnist_fcn.toml) and the balanced
model (`--model balanced-mlp`, 4 stages), backprop / sg / cdni, each run
stopping at 95% test accuracy or at its share of the budget (an MNIST run
weighs three times a balanced one: the verdict asked for is about it).
Locked backprop trains to 95% at 0 ms only; at the other delays it trains
3 s for its rate, and its time to 95% is projected from its steps (marked
so). Writes DIR/link-delay.json (the table) and DIR/link-delay.png (speedup
and time to 95% against the delay); run folders go to --work. The delay is
emulated in the transport (held in each sender's queue), and every row says so.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks" / "gpu")]  # dni without installation; the GPU run's prepare.py
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # for the workers

import torch  # noqa: E402

from dni.bench.linkdelay import Sweep, run_sweep, save_report  # noqa: E402
from dni.bench.linkdelay_report import print_link_delay  # noqa: E402
from dni.bench.speedup import balanced_job  # noqa: E402
from dni import Job, load_job  # noqa: E402
from prepare import unpack  # noqa: E402

DELAYS = (0.0, 1.0, 5.0, 20.0, 50.0)
MODES = ("backprop", "sg", "cdni")
BUDGET = 410.0  # seconds of runs; the pool's start-up (~15 s there) and the report come on top, within 8 minutes
WEIGHTS = {"mnist_fcn": 3.0}  # a reference network's run gets three times a balanced one's share: the verdict is about it
TIME_CAP = 100  # the most one run trains, even with budget to spare (and what the locked reference runs may take)
PROJECT_SECONDS = 3  # a locked run past 0 ms trains this long for its rate (15 MNIST steps at 50 ms)
BALANCED_STAGES = 4
EVAL_EVERY = {"mnist": 100, "balanced": 25}  # the time-to-95% resolution: ~0.5-1 s of training at 0 ms on the H100


def full_jobs(data_root: Path, device: str) -> list[Job]:
    mnist = load_job("mnist", {"data_root": str(data_root), "verify_data": False, "download": False,
                               "iterations": 100_000, "eval_every": EVAL_EVERY["mnist"]})
    balanced = replace(balanced_job(BALANCED_STAGES, False, 100_000, str(data_root)), eval_every=EVAL_EVERY["balanced"],
                       verify_data=False, download=False)
    return [on_device(mnist, device), on_device(balanced, device)]


def quick_jobs(data_root: Path, device: str) -> list[Job]:
    """The same two models on slices of the data, small enough for two busy cores."""
    mnist = load_job("mnist", {"data_root": str(data_root), "verify_data": False, "download": False, "batch_size": 64,
                               "iterations": 60, "eval_every": 10, "train_subset": 6400, "test_subset": 500, "lr": 1e-3})
    balanced = replace(balanced_job(3, False, 60, str(data_root)), eval_every=10, test_subset=500, batch_size=64,
                       verify_data=False, download=False)
    return [on_device(mnist, device), on_device(balanced, device)]


def on_device(job: Job, device: str) -> Job:
    return replace(job, stages=tuple(replace(stage, device=device) for stage in job.stages))


def environment(device: str) -> dict[str, Any]:
    gpu = device.startswith("cuda") and torch.cuda.is_available()
    return {"device": device, "device_name": torch.cuda.get_device_name(0) if gpu else f"CPU ({platform.machine()})",
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dni.bench").setLevel(logging.INFO)
    data_root = args.data_root or unpack(args.payload)
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if args.quick:
        jobs = quick_jobs(data_root, device)
        sweep = Sweep((0.0, 20.0), MODES, (0.6,), time_cap=10, budget=args.budget or 100, project_seconds=2)
    else:
        jobs = full_jobs(data_root, device)
        sweep = Sweep(DELAYS, MODES, (0.95,), time_cap=TIME_CAP, budget=args.budget or BUDGET, project_seconds=PROJECT_SECONDS,
                      weights=WEIGHTS)
    info = environment(device)
    print(f"{info['device_name']}, every stage on {device}; {len(jobs)} models x {len(sweep.delays)} delays x "
          f"{len(sweep.modes)} modes within {sweep.budget:.0f}s of runs", flush=True)
    report = run_sweep(jobs, sweep, args.work or Path(tempfile.mkdtemp(prefix="dni-linkdelay-")))
    report.update(environment=info, quick=args.quick)
    save_report(report, args.out)
    print_link_delay(report)
    print(f"\n{args.out / 'link-delay.json'}, {args.out / 'link-delay.png'} ({report['wall_seconds']:.0f}s of runs)")
    return 0 if all("steps" in row for row in report["rows"]) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for link-delay.json and link-delay.png")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, delays 0 and 20 ms, 60%% test accuracy as the target: a check that it all works")
    parser.add_argument("--device", help="every stage's device (default cuda:0 when there is a GPU, else cpu)")
    parser.add_argument("--budget", type=float, help=f"seconds of runs (default {BUDGET:.0f}; --quick 100)")
    parser.add_argument("--payload", type=Path, default=REPO / "benchmarks" / "gpu" / "payload",
                        help="the folder `benchmarks/gpu/run.py --prepare` filled (default benchmarks/gpu/payload)")
    parser.add_argument("--data-root", type=Path, help="a dataset folder to use instead of the payload")
    parser.add_argument("--work", type=Path, help="folder for run folders (default: a new temporary folder)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
