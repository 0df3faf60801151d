"""Kill a worker mid-run: does the run recover, and does it end where an uninterrupted run ends?

    python benchmarks/recovery/run.py                      # MNIST FCN, sg, 2000 iterations, kill stage 1 at ~55%
    python benchmarks/recovery/run.py --mode backprop --iterations 3000

Runs the same job (same seed) twice: once undisturbed, once with the worker of
`--stage` SIGKILLed after the checkpoint nearest `--kill-at` of the run. Prints
both final accuracies, their difference (target: within 0.5 points), the batches
re-sent, and every worker's peak resident memory.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from dni import load_job, run_job
from dni.lifetime import children


def kill_after(results: Path, step: int, stage: int) -> threading.Thread:
    def watch() -> None:
        position = None
        while position is None or '"step": %d' % step not in position.read_text():
            time.sleep(0.2)
            position = next(results.glob("*/checkpoints/coordinator.json"), None)
        time.sleep(2.0)
        victim = next(pid for pid, command in children(os.getpid()).items() if f"stage{stage}" in command)
        print(f"SIGKILL stage {stage} (pid {victim}) after the checkpoint at step {step}", flush=True)
        os.kill(victim, signal.SIGKILL)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="mnist")
    parser.add_argument("--mode", default="sg")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--kill-at", type=float, default=0.55, help="fraction of the run")
    parser.add_argument("--stage", type=int, default=1)
    parser.add_argument("--results", default="runs/bench-recovery")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    job = load_job(args.job, {"mode": args.mode, "iterations": args.iterations, "data_root": args.data_root,
                              "checkpoint_every": args.checkpoint_every})
    results = Path(args.results) / time.strftime("%Y%m%d-%H%M%S")
    _, clean = run_job(replace(job, results=str(results / "clean")), show_progress=False)
    checkpoint = int(args.kill_at * args.iterations) // args.checkpoint_every * args.checkpoint_every
    watcher = kill_after(results / "killed", checkpoint, args.stage)
    _, killed = run_job(replace(job, results=str(results / "killed")), show_progress=False)
    watcher.join()
    difference = 100 * (killed["test_accuracy"] - clean["test_accuracy"])
    print(f"\n{job.name} {args.mode}, {args.iterations} iterations, checkpoints every {args.checkpoint_every}")
    print(f"uninterrupted: {clean['test_accuracy']:.2%}   killed + recovered: {killed['test_accuracy']:.2%}   "
          f"difference {difference:+.2f} points (target within 0.5)")
    print(f"recoveries {killed['recoveries']}, batches re-sent {killed['resent_batches']}, "
          f"wall {clean['wall_seconds']:.0f}s vs {killed['wall_seconds']:.0f}s")
    for name, summary in (("uninterrupted", clean), ("recovered", killed)):
        print(f"peak RSS per worker ({name}): " + ", ".join(f"{m['max_rss_mb']:.0f} MB" for m in summary["worker_metrics"]))
    sys.exit(0 if killed["recoveries"] == 1 and abs(difference) <= 0.5 else 1)


if __name__ == "__main__":
    main()
