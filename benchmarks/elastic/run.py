"""Kill a rank of a torchrun group mid-run: torchrun restarts the group, the run resumes from its last
checkpoint; how far does it end from an undisturbed run, and how long does the restart take?

    python benchmarks/elastic/run.py --data-root ../shared/datasets             # 3 pairs of the smoke job
    python benchmarks/elastic/run.py --pairs 5 --mode backprop

Each pair runs the same job twice under `torchrun --standalone --nproc-per-node STAGES -m dni.launch`:
undisturbed, and with `--max-restarts 1` and rank `--rank` SIGKILLed right after the first checkpoint
(`--checkpoint-every`). Prints per pair both final test accuracies and their difference, and for the
killed run the seconds from the kill to the resumed coordinator's start and to its first training
result (restart-to-resume); then the mean and largest difference. Exits non-zero if a killed run did
not finish resumed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from dni.lifetime import descendants

REPO = Path(__file__).resolve().parents[2]


def rank_pid(root: int, rank: int) -> Optional[int]:
    for pid in descendants({root}):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dni.launch" in command and f"RANK={rank}".encode() in environment:
            return pid
    return None


def run(args: argparse.Namespace, results: Path, kill: bool) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.stages),
               *(["--max-restarts", "1"] if kill else []), "-m", "dni.launch", args.job, "--mode", args.mode,
               "--iterations", str(args.iterations), "--checkpoint-every", str(args.checkpoint_every),
               "--results", str(results), "--no-progress"]
    if args.data_root:
        command += ["--data-root", args.data_root]
    results.mkdir(parents=True)
    with (results / "torchrun.log").open("w") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        killed_at = None
        while kill and killed_at is None and agent.poll() is None:
            if list(results.glob("*/checkpoints/coordinator.json")):
                victim = rank_pid(agent.pid, args.rank)
                os.kill(victim, signal.SIGKILL)
                killed_at = time.time()
            time.sleep(0.02)
        code = agent.wait()
    if code != 0:
        sys.exit(f"torchrun exited with {code}; see {results / 'torchrun.log'}")
    run_folder = next(path for path in results.iterdir() if path.is_dir())
    summary = json.loads((run_folder / "summary.json").read_text())
    if kill:
        starts = [json.loads(line) for line in (run_folder / "launches.jsonl").read_text().splitlines()]
        summary["killed_at"] = killed_at
        summary["restarted_after"] = starts[-1]["started"] - killed_at
        summary["resumed_after"] = summary["first_result_at"] - killed_at
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="mnist-smoke", help="shortcut or job file (default mnist-smoke)")
    parser.add_argument("--stages", type=int, default=3, help="the job's stage count: ranks to start (default 3)")
    parser.add_argument("--mode", default="sg")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--rank", type=int, default=1, help="the rank to kill (default 1)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--results", default="runs/bench-elastic")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    base = Path(args.results) / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for pair in range(args.pairs):
        clean = run(args, base / f"{pair}-clean", kill=False)
        killed = run(args, base / f"{pair}-killed", kill=True)
        ok = killed["status"] == "complete" and killed["restarts"] == 1 and killed["resumed_from_step"] == args.checkpoint_every
        difference = 100 * (killed["test_accuracy"] - clean["test_accuracy"])
        rows.append((clean, killed, difference, ok))
        print(f"pair {pair}: unkilled {clean['test_accuracy']:.2%} ({clean['wall_seconds']:.1f}s training)   "
              f"killed {killed['test_accuracy']:.2%} (resumed from step {killed['resumed_from_step']}, restarts "
              f"{killed['restarts']})   difference {difference:+.2f} points   coordinator restarted "
              f"{killed['restarted_after']:.1f}s after the kill, first result {killed['resumed_after']:.1f}s after it",
              flush=True)
    differences = [row[2] for row in rows]
    resumes = [row[1]["resumed_after"] for row in rows]
    print(f"\n{args.job} {args.mode}, {args.iterations} iterations, checkpoints every {args.checkpoint_every}, rank {args.rank} "
          f"killed: accuracy difference killed - unkilled mean {statistics.mean(differences):+.2f} points, largest "
          f"{max(differences, key=abs):+.2f} (|d| {min(map(abs, differences)):.2f}-{max(map(abs, differences)):.2f}); "
          f"restart-to-resume {min(resumes):.1f}-{max(resumes):.1f}s (median {statistics.median(resumes):.1f}s)")
    sys.exit(0 if all(row[3] for row in rows) else 1)


if __name__ == "__main__":
    main()
