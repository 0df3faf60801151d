"""The reference MNIST experiment in every mode: accuracy, wall time, throughput, and no leftover workers.

    python benchmarks/mnist_modes/run.py                     # all modes, 25,000 iterations each
    python benchmarks/mnist_modes/run.py --modes sg,cdni --iterations 2000

Each mode runs as its own `dni run mnist --mode M` so every run starts clean.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TARGETS = {  # mode -> (lowest, highest) acceptable test accuracy after 25k iterations
    "backprop": (0.978, 1.0), "sg": (0.975, 1.0), "cdni": (0.978, 1.0), "no_bprop": (0.88, 0.91), "sl": (0.0, 1.0),
}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "zombie" in status.read_text())


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    results = Path(args.results) / mode
    command = [sys.executable, "-m", "dni", "run", "mnist", "--mode", mode, "--iterations", str(args.iterations),
               "--results", str(results), "--no-progress", "--log-level", "WARNING", *args.extra]
    subprocess.run(command, check=True)
    run = sorted(results.iterdir())[-1]
    summary = json.loads((run / "summary.json").read_text())
    summary["run"] = str(run)
    summary["leftover_workers"] = [w["pid"] for w in summary["workers"] if alive(w["pid"])]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="backprop,sg,cdni,no_bprop,sl")
    parser.add_argument("--iterations", type=int, default=25_000)
    parser.add_argument("--results", default="runs/bench-mnist-modes")
    parser.add_argument("extra", nargs="*", help="further flags for dni run (after --)")
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        summary = run_mode(mode, args)
        low, high = TARGETS[mode]
        summary["meets_target"] = low <= summary["test_accuracy"] <= high and not summary["leftover_workers"]
        rows.append(summary)
        Path(args.results, "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nMNIST FCN, {args.iterations} iterations, batch 256, on {os.cpu_count()} cores")
    print(f"{'mode':<10} {'test acc':>9} {'best':>8} {'wall s':>8} {'samples/s':>10} {'target':>13} {'ok':>4}")
    for row in rows:
        low, high = TARGETS[row["mode"]]
        target = f">= {low:.1%}" if high == 1.0 else f"{low:.0%}-{high:.0%}"
        print(f"{row['mode']:<10} {row['test_accuracy']:>9.2%} {row['best_test_accuracy']:>8.2%} {row['wall_seconds']:>8.0f} "
              f"{row['samples_per_second']:>10.0f} {target if low else 'report':>13} {'yes' if row['meets_target'] else 'NO':>4}")
    subprocess.run([sys.executable, "-m", "dni", "plot", *(row["run"] for row in rows), "-o", str(Path(args.results, "accuracy.png")),
                    "--title", "Synthetic gradients on MNIST (pipeline of worker processes)"], check=True)
    sys.exit(0 if all(row["meets_target"] for row in rows) else 1)


if __name__ == "__main__":
    main()
