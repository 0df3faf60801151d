"""Chaos: one long run undisturbed, under repeated worker faults, and with its coordinator killed and resumed
again and again; does each finish, and how far from the undisturbed run's accuracy?

    python benchmarks/chaos/run.py --data-root ../shared/datasets --results benchmarks/chaos/results
    python benchmarks/chaos/run.py --iterations 300 --kills 2 --stops 2 --replacement-kills 2 --checkpoint-stops 2 \\
        --checkpoint-every 50 --interval 3 5 --coordinator-kills 2 --coordinator-interval 10 13   # smoke: ~3 minutes

Every run is `dni run mnist --mode sg --iterations N --checkpoint-every C` as an operator starts it
(`python -m dni run`), with the job's own seed:

- undisturbed;
- worker faults (dni/bench/chaos.py): random workers SIGKILLed (--kills) and SIGSTOPped for good (--stops), a
  replacement worker SIGKILLed 0.5 s after it starts (--replacement-kills: a fault during a recovery), a worker
  SIGSTOPped while a checkpoint waits for it (--checkpoint-stops); each fault comes --interval LOW HIGH seconds
  (seeded) after the coordinator answered the one before by starting a replacement;
- coordinator kills: the `dni run` process SIGKILLed --coordinator-interval LOW HIGH seconds (seeded) after each
  start and resumed with `dni run --resume RUN`, --coordinator-kills times; then the run finishes.

For each: whether it completed, its test accuracy and the difference from the undisturbed run (target: within
0.5 points), the faults made by kind, recoveries and batches re-sent (summary.json, totals across resumed
segments), the longest a worker fault went unnoticed (from the fault to the coordinator's "replacing its
worker" log line) and the wall time. Prints a table and writes results.json (settings, rows, every fault and
segment) into --results, else into the scratch folder beside the runs and their logs. Exits non-zero if a run
did not complete, a planned fault was not made or never noticed, or an accuracy misses the target.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from dni.bench.chaos import Segment, coordinator_delays, kill_and_resume, notices, plan, run_folder, run_with_faults, unnoticed

REPO = Path(__file__).resolve().parents[2]
TARGET_POINTS = 0.5
PARTS = ("undisturbed", "workers", "coordinator")


def job_command(args: argparse.Namespace, results: Path) -> list[str]:
    return [sys.executable, "-m", "dni", "run", args.job, "--mode", args.mode, "--iterations", str(args.iterations),
            "--checkpoint-every", str(args.checkpoint_every), "--data-root", args.data_root, "--no-verify-data",
            "--no-progress", "--results", str(results)]


def summary_of(results: Path) -> dict[str, Any]:
    run = run_folder(results)
    return json.loads((run / "summary.json").read_text()) if run and (run / "summary.json").is_file() else {}


def row(part: str, exit_code: Optional[int], summary: dict[str, Any], faults: Counter, wall: float) -> dict[str, Any]:
    return {"part": part, "completed": exit_code == 0 and summary.get("status") == "complete", "exit_code": exit_code,
            "test_accuracy": summary.get("test_accuracy"), "faults": dict(faults), "recoveries": summary.get("recoveries"),
            "resent_batches": summary.get("resent_batches"), "wall_seconds": wall}


def undisturbed(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    outcome = run_with_faults(job_command(args, folder / "runs"), folder / "runs", [], folder / "run.log", args.timeout)
    return row("undisturbed", outcome.exit_code, summary_of(folder / "runs"), Counter(), outcome.seconds)


def worker_faults(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    counts = {"kill": args.kills, "stop": args.stops, "kill_replacement": args.replacement_kills,
              "stop_at_checkpoint": args.checkpoint_stops}
    faults = plan(args.seed, counts, *args.interval)
    outcome = run_with_faults(job_command(args, folder / "runs"), folder / "runs", faults, folder / "run.log", args.timeout)
    late = unnoticed([hit.at for hit in outcome.hits], notices(outcome.log))
    noticed = [seconds for seconds in late if seconds is not None]
    return {**row("worker faults", outcome.exit_code, summary_of(folder / "runs"), Counter(hit.kind for hit in outcome.hits),
                  outcome.seconds),
            "planned": {kind: count for kind, count in counts.items() if count},
            "longest_unnoticed_seconds": max(noticed, default=None), "never_noticed": late.count(None),
            "frozen_left_behind": outcome.leftover,
            "hits": [{"kind": hit.kind, "pid": hit.pid, "at": hit.at, "unnoticed_seconds": seconds}
                     for hit, seconds in zip(outcome.hits, late)]}


def coordinator_kills(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    started = time.monotonic()
    delays = coordinator_delays(args.seed, args.coordinator_kills, *args.coordinator_interval)
    segments = kill_and_resume(job_command(args, folder / "runs"), folder / "runs", delays, folder / "run.log", args.timeout)
    summary = summary_of(folder / "runs")
    killed = sum(segment.killed_at is not None and not segment.after_completion for segment in segments)
    return {**row("coordinator kills", segments[-1].exit_code, summary, Counter(coordinator_kill=killed) - Counter(),
                  time.monotonic() - started),
            "planned": dict(Counter(coordinator_kill=args.coordinator_kills) - Counter()),
            "summary_segments": len(summary.get("segments", [])),
            "segments": [segment_record(segment) for segment in segments]}


def segment_record(segment: Segment) -> dict[str, Any]:
    return {"pid": segment.pid, "resumed_from": segment.resumed_from, "killed": segment.killed_at is not None,
            "after_completion": segment.after_completion,
            "killed_after": segment.killed_at - segment.started if segment.killed_at else None,
            "exit_code": segment.exit_code, "workers": sorted(segment.workers), "orphans": segment.orphans}


def shortfalls(rows: list[dict[str, Any]]) -> list[str]:
    """Why the benchmark failed: one line per missed target."""
    found = []
    for entry in rows:
        name = entry["part"]
        if not entry["completed"]:
            found.append(f"{name}: did not complete (exit code {entry['exit_code']})")
        if entry.get("difference_points") is not None and abs(entry["difference_points"]) > TARGET_POINTS:
            found.append(f"{name}: {entry['difference_points']:+.2f} points from the undisturbed run (target within {TARGET_POINTS})")
        if "planned" in entry and entry["faults"] != entry["planned"]:
            found.append(f"{name}: made {entry['faults']} of {entry['planned']}: the run ended first "
                         "(more --iterations, or shorter intervals)")
        if entry.get("never_noticed"):
            found.append(f"{name}: {entry['never_noticed']} faults were never noticed")
        if entry.get("frozen_left_behind"):
            found.append(f"{name}: frozen workers outlived the run: {entry['frozen_left_behind']}")
        orphans = [pid for segment in entry.get("segments", []) for pid in segment["orphans"]]
        if orphans:
            found.append(f"{name}: workers outlived their killed coordinator: {orphans}")
    return found


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'part':<18} {'completed':>9} {'test acc':>9} {'difference':>11}  {'faults':<56} {'recoveries':>10} "
          f"{'re-sent':>7} {'unnoticed':>9} {'wall s':>7}")
    for entry in rows:
        accuracy = f"{entry['test_accuracy']:.2%}" if entry["test_accuracy"] is not None else "-"
        difference = f"{entry['difference_points']:+.2f} pts" if entry.get("difference_points") is not None else "-"
        faults = ", ".join(f"{kind} {count}" for kind, count in entry["faults"].items()) or "-"
        late = entry.get("longest_unnoticed_seconds")
        print(f"{entry['part']:<18} {'yes' if entry['completed'] else 'NO':>9} {accuracy:>9} {difference:>11}  {faults:<56} "
              f"{_number(entry['recoveries']):>10} {_number(entry['resent_batches']):>7} "
              f"{f'{late:.1f} s' if late is not None else '-':>9} {entry['wall_seconds']:>7.0f}")


def _number(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="mnist")
    parser.add_argument("--mode", default="sg")
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault plans (the job keeps its own)")
    parser.add_argument("--kills", type=int, default=8, help="workers SIGKILLed")
    parser.add_argument("--stops", type=int, default=8, help="workers SIGSTOPped for good")
    parser.add_argument("--replacement-kills", type=int, default=2, help="replacement workers SIGKILLed as they start")
    parser.add_argument("--checkpoint-stops", type=int, default=2, help="workers SIGSTOPped during a checkpoint")
    parser.add_argument("--interval", type=float, nargs=2, default=[10.0, 15.0], metavar=("LOW", "HIGH"),
                        help="seconds from the coordinator's answer to one worker fault to the next (default 10 15)")
    parser.add_argument("--coordinator-kills", type=int, default=10)
    parser.add_argument("--coordinator-interval", type=float, nargs=2, default=[10.0, 20.0], metavar=("LOW", "HIGH"),
                        help="seconds from a coordinator's start to its kill (default 10 20)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which runs (default {','.join(PARTS)})")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds after which a run is killed and fails")
    parser.add_argument("--work", default="runs/bench-chaos", help="parent of the scratch folder (runs and their logs)")
    parser.add_argument("--results", help="folder for results.json (default: the scratch folder)")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scratch = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for part, measure in zip(PARTS, (undisturbed, worker_faults, coordinator_kills)):
        if part in args.parts.split(","):
            (scratch / part).mkdir(parents=True)
            rows.append(measure(args, scratch / part))
    reference = next((entry["test_accuracy"] for entry in rows if entry["part"] == "undisturbed"), None)
    for entry in rows:
        if entry["part"] != "undisturbed" and reference is not None and entry["test_accuracy"] is not None:
            entry["difference_points"] = 100 * (entry["test_accuracy"] - reference)
    print(f"\n{args.job} {args.mode}, {args.iterations} iterations, checkpoints every {args.checkpoint_every}, seed {args.seed}; "
          f"runs and logs in {scratch}")
    print_table(rows)
    results = Path(args.results) if args.results else scratch
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    print(f"\nresults: {results / 'results.json'}")
    failed = shortfalls(rows)
    for line in failed:
        print(f"MISSED {line}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
