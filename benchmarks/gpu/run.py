"""The GPU acceptance run: every measurement that needs a GPU machine, in one command that fits its short lease.

    python benchmarks/gpu/run.py --prepare benchmarks/gpu/payload      # here: gather data and the pyzmq wheel
    python benchmarks/gpu/run.py --out DIR                             # there: up to 8 minutes on one GPU
    python benchmarks/gpu/run.py --out DIR --dry-run                   # anywhere: every part on CPU, tiny sizes

Parts, each with a share of `--budget` (a part that finishes early leaves its
time to the later ones, and a part skips what no longer fits, saying why):
tests (tests/e2e/test_gpu.py, no skips allowed with a GPU), mnist (the reference
network, three workers sharing the GPU, backprop/sg/cdni, and the same on CPU
workers), cifar (the CIFAR-10 CNN with conv synthesizers on a 10,000-image
slice), profile (one sg step split into compute, copies and socket), scaling
(`dni bench speedup --model balanced-mlp` with real compute on the CPU cores).
Writes DIR/gpu.json after every part, then DIR/gpu.png and a summary table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # dni without installation, as on the GPU machine; worker processes inherit it below
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

import torch  # noqa: E402

from budget import Budget, OutOfTime  # noqa: E402
from dni.bench.speedup import balanced_job, measure, time_to_accuracy  # noqa: E402
from dni import Job, load_job, run_job  # noqa: E402
from dni.coordinator.results.folder import read_metrics  # noqa: E402
from dni.files import write_text_atomically  # noqa: E402
from datapath import profile_stage  # noqa: E402
from prepare import CIFAR_TEST_IMAGES, CIFAR_TRAIN_IMAGES, prepare, unpack  # noqa: E402
from report import PARTS, missing_fields, plot_report, print_summary  # noqa: E402

MODES = ("backprop", "sg", "cdni")
SHARES = {"tests": 60, "mnist": 150, "cifar": 130, "profile": 30, "scaling": 110}  # seconds of the full 480
FULL_BUDGET, DRY_BUDGET = 480.0, 1200.0  # the dry run takes ~2 min; its budget only guards against a hang
START_UP_GUESS = 10.0  # seconds to start a run's workers, until one run has measured it
LEAST_RUN_SECONDS = 5


@dataclass(frozen=True)
class Sizes:
    mnist_steps: int = 2000
    mnist_test_subset: int = 0
    cifar_steps: int = 1500
    cifar_eval_every: int = 250
    cifar_batch_size: int = 256
    cifar_test_subset: int = 0
    scaling_stages: tuple[int, ...] = (2, 4, 8)
    scaling_iterations: int = 200
    profile_steps: int = 30


FULL = Sizes()
DRY = Sizes(mnist_steps=20, mnist_test_subset=1000, cifar_steps=3, cifar_eval_every=3, cifar_batch_size=16,
            cifar_test_subset=100, scaling_stages=(2,), scaling_iterations=12, profile_steps=2)


class Context:
    """What every part shares: where things go, the sizes, the device, and the measured start-up cost of a run."""

    def __init__(self, args: argparse.Namespace, data_root: Path) -> None:
        self.sizes = DRY if args.dry_run else FULL
        self.dry_run = args.dry_run
        self.data_root = data_root
        self.work = Path(args.work or tempfile.mkdtemp(prefix="dni-gpu-"))
        self.gpu = "cuda:0" if torch.cuda.is_available() and not args.dry_run else "cpu"
        self.start_up = START_UP_GUESS

    def job(self, shortcut: str, device: str, **settings: Any) -> Job:
        job = load_job(shortcut, {"data_root": str(self.data_root), "verify_data": False, "download": False,
                                  "results": str(self.work / "runs"), **settings})
        return on_device(job, device)

    def train(self, job: Job) -> dict[str, Any]:
        """One run of `job`, summarised; a failure is recorded in the row, so the other rows still run."""
        started = time.monotonic()
        try:
            folder, summary = run_job(job, show_progress=False)
        except Exception as error:  # one broken run must not cost the others their window
            logging.getLogger("dni.gpu").exception("run %s failed", job.name)
            return {"mode": job.mode.value, "error": f"{type(error).__name__}: {error}"}
        start_up = time.monotonic() - started - summary["wall_seconds"]
        self.start_up = max(start_up, 1.0)
        records = read_metrics(folder.path)
        return {
            "mode": job.mode.value, "devices": [worker["device"] for worker in summary["workers"]],
            "steps": summary["steps"], "time_limit": job.time_limit, "stopped_at_time_limit": summary["stopped_at_time_limit"],
            "steady_samples_per_second": summary["steady_samples_per_second"], "samples_per_second": summary["samples_per_second"],
            "test_accuracy": summary["test_accuracy"], "wall_seconds": summary["wall_seconds"], "start_up_seconds": start_up,
            "time_to_95": time_to_accuracy(records, [0.95])["0.950"],
            "curve": [[record["step"], record["test_accuracy"]] for record in records], "run": str(folder.path),
        }


def on_device(job: Job, device: str) -> Job:
    return replace(job, stages=tuple(replace(stage, device=device) for stage in job.stages))


# -- parts ---------------------------------------------------------------------------------------------------------

def tests_part(context: Context, budget: Budget) -> dict[str, Any]:
    junit = context.work / "test_gpu.xml"
    command = [sys.executable, "-m", "pytest", "tests/e2e/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    try:
        completed = subprocess.run(command, cwd=REPO, env={**os.environ, "DNI_DATA_ROOT": str(context.data_root)},
                                   capture_output=True, text=True, timeout=max(10.0, budget.remaining()))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"pytest did not finish within the part's {budget.seconds:.0f}s"}
    suite = ElementTree.parse(junit).getroot().iter("testsuite").__next__()
    counts = {name: int(suite.get(name, 0)) for name in ("tests", "failures", "errors", "skipped")}
    result = {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
              "failed": counts["failures"] + counts["errors"], "skipped": counts["skipped"],
              "exit_code": completed.returncode, "output_tail": completed.stdout[-3000:]}
    if completed.returncode != 0:
        result.update(status="failed", reason=f"pytest exited with {completed.returncode}")
    elif torch.cuda.is_available() and counts["skipped"]:
        result.update(status="failed", reason="a GPU is present, yet tests were skipped")
    return result


def mnist_part(context: Context, budget: Budget) -> dict[str, Any]:
    plan = [(placement, mode) for placement in ("gpu", "cpu") for mode in MODES]
    gpus = torch.cuda.device_count()
    if gpus > 1 and not context.dry_run:
        plan.append(("auto", "sg"))
    rows = []
    for position, (placement, mode) in enumerate(plan):
        row: dict[str, Any] = {"placement": placement, "mode": mode}
        try:
            limit = budget.share(len(plan) - position, context.start_up, LEAST_RUN_SECONDS)
        except OutOfTime as error:
            rows.append({**row, "skipped": str(error)})
            continue
        device = {"gpu": context.gpu, "cpu": "cpu", "auto": "auto"}[placement]
        job = context.job("mnist", device, mode=mode, iterations=context.sizes.mnist_steps, time_limit=limit,
                          test_subset=context.sizes.mnist_test_subset, name=f"mnist-{placement}")
        rows.append({**row, **context.train(job)})
        _say(f"mnist {placement} {mode}", rows[-1])
    auto = "ran" if gpus > 1 and not context.dry_run else f"not run: {gpus} GPU(s) visible; device = \"auto\" spreads stages over more than one"
    return {"rows": rows, "auto_row": auto}


def cifar_part(context: Context, budget: Budget) -> dict[str, Any]:
    sizes = context.sizes
    rows = []
    for position, mode in enumerate(MODES):
        try:
            limit = budget.share(len(MODES) - position, context.start_up, LEAST_RUN_SECONDS)
        except OutOfTime as error:
            rows.append({"mode": mode, "skipped": str(error)})
            continue
        job = context.job("cifar10", context.gpu, mode=mode, iterations=sizes.cifar_steps, eval_every=sizes.cifar_eval_every,
                          batch_size=sizes.cifar_batch_size, test_subset=sizes.cifar_test_subset, time_limit=limit,
                          name="cifar10")
        rows.append(context.train(job))
        _say(f"cifar10 {mode}", rows[-1])
    return {"rows": rows}


def profile_part(context: Context, budget: Budget) -> dict[str, Any]:
    targets = [("mnist", 1, {}), ("cifar10", 0, {"batch_size": context.sizes.cifar_batch_size}),
               ("cifar10", 1, {"batch_size": context.sizes.cifar_batch_size})]
    stages = []
    for shortcut, index, settings in targets:
        if budget.remaining() < LEAST_RUN_SECONDS:
            return {"stages": stages, "status": "failed", "reason": f"out of time before {shortcut} stage {index}"}
        job = context.job(shortcut, context.gpu, **settings)
        stages.append(profile_stage(job, index, context.gpu, context.sizes.profile_steps))
        print(f"profiled {shortcut} stage {index}: step {stages[-1]['current']['step_ms']:.2f} ms "
              f"(previous copies {stages[-1]['previous']['step_ms']:.2f} ms)", flush=True)
    return {"stages": stages}


def scaling_part(context: Context, budget: Budget) -> dict[str, Any]:
    """`dni bench speedup --model balanced-mlp --emulate never --modes backprop,sg --no-baselines`, one stage count at a time."""
    counts = context.sizes.scaling_stages
    rows = []
    for position, count in enumerate(counts):
        try:
            limit = budget.share(2 * (len(counts) - position), context.start_up, LEAST_RUN_SECONDS)
        except OutOfTime as error:
            rows.append({"stages": count, "skipped": str(error)})
            continue
        job = replace(balanced_job(count, False, context.sizes.scaling_iterations, str(context.data_root)),
                      time_limit=limit, verify_data=False, download=False)
        entry = measure(job, ["backprop", "sg"], [0.95], context.work / "scaling" / job.name, baselines=False)
        locked, unlocked = entry["results"]["backprop"], entry["results"]["sg"]
        rows.append({"stages": count, "emulated": False, "threads_per_stage": job.threads,
                     "backprop_samples_per_second": locked["steady_samples_per_second"],
                     "sg_samples_per_second": unlocked["steady_samples_per_second"], "speedup": entry["speedup"]["sg"],
                     "workers": {mode: entry["results"][mode]["workers"] for mode in ("backprop", "sg")}})
        print(f"scaling L={count}: speedup {rows[-1]['speedup']:.2f}x", flush=True)
    return {"rows": rows}


PART_RUNNERS: dict[str, Callable[[Context, Budget], dict[str, Any]]] = {
    "tests": tests_part, "mnist": mnist_part, "cifar": cifar_part, "profile": profile_part, "scaling": scaling_part,
}


# -- the run -------------------------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    gpus = torch.cuda.device_count()
    return {
        "device_name": torch.cuda.get_device_name(0) if gpus else f"CPU ({platform.processor() or platform.machine()})",
        "gpus": gpus, "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if gpus else None,
        "driver": _nvidia_smi("driver_version"), "gpu_memory": _nvidia_smi("memory.total"),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
    }


def _nvidia_smi(field: str) -> str | None:
    try:
        completed = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def _say(what: str, row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{what}: FAILED {row['error']}", flush=True)
        return
    print(f"{what}: {row['steps']} steps, {row['steady_samples_per_second']:,.0f} samples/s, test accuracy "
          f"{row['test_accuracy']:.2%}, {row['wall_seconds']:.1f}s (+{row['start_up_seconds']:.1f}s start-up)", flush=True)


def run_parts(context: Context, report: dict[str, Any], parts: list[str], total: Budget, out: Path) -> None:
    for position, name in enumerate(parts):
        later_shares = sum(SHARES[later] for later in parts[position:])
        budget = Budget(max(0.0, total.remaining()) * SHARES[name] / later_shares)
        started = time.monotonic()
        print(f"\n-- part {name}: {budget.seconds:.0f}s", flush=True)
        if budget.seconds < LEAST_RUN_SECONDS:
            record: dict[str, Any] = {"status": "skipped", "reason": f"only {budget.seconds:.0f}s of the whole budget left"}
        else:
            try:
                record = {"status": "ok", **PART_RUNNERS[name](context, budget)}
            except Exception as error:  # recorded, and the later parts still get their turn
                logging.getLogger("dni.gpu").exception("part %s failed", name)
                record = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        if record["status"] == "ok" and any("skipped" in row or "error" in row for row in record.get("rows", [])):
            record.update(status="partial", reason="some rows were skipped or failed (see rows)")
        report["parts"][name] = {**record, "budget_seconds": budget.seconds, "seconds": time.monotonic() - started}
        report["wall_seconds"] = report.get("earlier_wall_seconds", 0.0) + time.monotonic() - total.deadline + total.seconds
        _write(out / "gpu.json", report)


def _merged(earlier: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """An earlier report whose parts this invocation reruns; a part not rerun keeps its earlier result.

    For a short lease: rerun what failed or did not fit, keep the rest. Both
    invocations are listed, and a different device refuses to merge.
    """
    if earlier["device_name"] != report["device_name"] or earlier["dry_run"] != report["dry_run"]:
        raise SystemExit(f"--merge: that report is from {earlier['device_name']} (dry run: {earlier['dry_run']}), not this device")
    invocations = earlier.get("invocations") or [{"started": earlier.get("date"), "parts": list(earlier["parts"]),
                                                  "budget_seconds": earlier["budget_seconds"]}]
    return {**report, "parts": dict(earlier["parts"]), "invocations": invocations + report["invocations"],
            "budget_seconds": earlier["budget_seconds"] + report["budget_seconds"], "earlier_wall_seconds": earlier["wall_seconds"]}


def _write(path: Path, report: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.prepare:
        size = prepare(args.prepare, Path(args.data_root or os.environ.get("DNI_DATA_ROOT") or REPO.parent / "shared" / "datasets"),
                       wheel=not args.no_wheel)
        print(f"{args.prepare}: {size / 2**20:.1f} MiB to carry to the GPU machine")
        return 0
    if not args.out:
        _parser().error("--out DIR is required (or --prepare DIR)")
    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    context = Context(args, unpack(args.payload))
    total = Budget(args.budget or (DRY_BUDGET if args.dry_run else FULL_BUDGET))
    info = environment()
    parts = args.parts.split(",")
    report: dict[str, Any] = {
        "device_name": info["device_name"], "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d"),
        "budget_seconds": total.seconds, "wall_seconds": 0.0, "sizes": vars(context.sizes) | {"scaling_stages": list(context.sizes.scaling_stages)},
        "data": {"mnist": "full MNIST (60,000 training, 10,000 test images)",
                 "cifar10": f"CIFAR-10 slice: first {CIFAR_TRAIN_IMAGES:,} training images (data_batch_1), first {CIFAR_TEST_IMAGES:,} test images"},
        "environment": info, "parts": {},
        "invocations": [{"started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": parts, "budget_seconds": total.seconds}],
    }
    if args.merge:
        report = _merged(json.loads(args.merge.read_text()), report)
    print(f"device: {info['device_name']}; torch {info['torch']}, CUDA {info['cuda']}, {info['cpu_count']} CPU cores", flush=True)
    run_parts(context, report, parts, total, args.out)
    plot_report(report, args.out / "gpu.png")
    print_summary(report)
    missing = missing_fields(report)
    for field in missing:
        print(f"MISSING: {field}")
    print(f"\n{args.out / 'gpu.json'}, {args.out / 'gpu.png'}; run folders under {context.work}")
    return 1 if missing else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu.json and gpu.png")
    parser.add_argument("--dry-run", action="store_true", help="every part on CPU with tiny sizes (CI)")
    parser.add_argument("--payload", type=Path, default=REPO / "benchmarks" / "gpu" / "payload",
                        help="the folder --prepare filled (default benchmarks/gpu/payload)")
    parser.add_argument("--budget", type=float, help=f"seconds for all parts (default {FULL_BUDGET:.0f}, dry run {DRY_BUDGET:.0f})")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--merge", type=Path, metavar="GPU_JSON",
                        help="start from this earlier gpu.json: the parts run now replace its parts, the others stay")
    parser.add_argument("--work", type=Path, help="folder for run folders (default: a new temporary folder)")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="fill DIR with what the GPU machine needs, then stop")
    parser.add_argument("--data-root", help="with --prepare: the datasets to copy from (default $DNI_DATA_ROOT, else ../shared/datasets)")
    parser.add_argument("--no-wheel", action="store_true", help="with --prepare: no pyzmq wheel (a machine that has pyzmq)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
