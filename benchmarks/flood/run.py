"""A live run flooded with hostile messages against the same run left alone: log bytes, accuracy, refusals.

    python benchmarks/flood/run.py                      # 30 s of flood, smoke job over tcp
    python benchmarks/flood/run.py --seconds 90 --iterations 3000

Each run is `dni run mnist-smoke --transport tcp` as a user starts it; the
flood (dni.testing, which the fuzz tests use too) hits every socket of every worker from the moment their
addresses appear in the log, as fast as it can, for `--seconds`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from dni.testing import flood, wait_for_endpoints

REPO = Path(__file__).resolve().parents[2]


def run(folder: Path, iterations: int, data_root: str, seconds: float) -> dict:
    log_path = folder / "run.log"
    command = [sys.executable, "-m", "dni", "run", "mnist-smoke", "--transport", "tcp",
               "--iterations", str(iterations), "--data-root", data_root, "--results", str(folder / "runs"), "--no-progress"]
    started = time.monotonic()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    sent = 0
    if seconds:
        context = zmq.Context()
        sent = flood(wait_for_endpoints(log_path, stages=3), seconds, context)
        context.destroy(linger=0)
    code = process.wait()
    summary = json.loads(next((folder / "runs").glob("*/summary.json")).read_text())
    return {"flood_seconds": seconds, "hostile_messages": sent, "exit_code": code, "log_bytes": log_path.stat().st_size,
            "log_lines": len(log_path.read_text().splitlines()), "test_accuracy": summary.get("test_accuracy"),
            "refused": sum(summary.get("worker_errors", [])), "wall_seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="flood duration")
    parser.add_argument("--iterations", type=int, default=2000, help="training steps of each run (long enough to outlast the flood)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets"))
    args = parser.parse_args()
    rows = []
    for seconds in (0.0, args.seconds):
        with tempfile.TemporaryDirectory(prefix="dni-flood-") as folder:
            rows.append(run(Path(folder), args.iterations, args.data_root, seconds))
    print(f"{'flood':>7} {'hostile msgs':>12} {'refused':>9} {'log bytes':>10} {'log lines':>9} {'test acc':>9} {'wall s':>7} exit")
    for row in rows:
        print(f"{row['flood_seconds']:>6.0f}s {row['hostile_messages']:>12,} {row['refused']:>9,} {row['log_bytes']:>10,} "
              f"{row['log_lines']:>9} {row['test_accuracy']:>9.2%} {row['wall_seconds']:>7.1f} {row['exit_code']}")


if __name__ == "__main__":
    main()
