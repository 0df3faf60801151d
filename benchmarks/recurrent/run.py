"""The paper's Table 1 (copy, repeat copy): the longest length solved within a fixed budget, truncated BPTT vs DNI.

    python benchmarks/recurrent/run.py                                  # T in 2,3,5; both tasks; 20,000 batches
    python benchmarks/recurrent/run.py --truncations 2,8 --batches 2000 --no-workers

Every run is the job `dni run copy` / `dni run repeat-copy` runs (coordinator/jobs/copy.toml, repeat_copy.toml:
an LSTM of 64 units, a per-step linear readout, Adam 3e-3, batches of 32), from length 1 up the curriculum (one
more once 10 batches average under 0.15 bits per output step), with `--truncation T` and `--iterations`:

- backprop: truncated BPTT of T steps. In one process and on workers it is the same computation, step for step
  (tests/e2e/test_sequences.py), so it runs once, in one process.
- sg, one process: the paper's setting; a synthesizer over time bridges each truncation, the readout's true
  gradient reaches the LSTM (`dni.coordinator.train.sequences`).
- sg, workers: the LSTM and the readout on worker processes of their own (`dni.coordinator.train.run.run_job`), the
  LSTM also decoupled from the readout by a synthesizer of dL/d(outputs) between them.

Writes `results.json` (every run's summary, its curve every CURVE_EVERY-th batch) and `table.md` into --results,
and prints the table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dni.coordinator.jobs.job import load_job
from dni.coordinator.train.run import run_job
from dni.coordinator.train.sequences import train_sequences

CURVE_EVERY = 100
SETTLED = 500  # batches at the end whose mean error is reported, as "length solved (error on the next length)"
COLUMNS = [("backprop", "one process"), ("sg", "one process"), ("sg", "workers")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="copy,repeat-copy")
    parser.add_argument("--truncations", default="2,3,5")
    parser.add_argument("--batches", type=int, default=20_000, help="batches of sequences per run (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-workers", action="store_true", help="skip the runs on workers")
    parser.add_argument("--results", default="benchmarks/recurrent/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    columns = [column for column in COLUMNS if not (args.no_workers and column[1] == "workers")]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for task in args.tasks.split(","):
            for truncation in map(int, args.truncations.split(",")):
                for mode, where in columns:
                    job = load_job(task, {"mode": mode, "truncation": truncation, "iterations": args.batches,
                                          "seed": args.seed, "threads": 1, "results": scratch, "checkpoint_every": 0})
                    started = time.monotonic()
                    summary = train_sequences(job) if where == "one process" else run_job(job, show_progress=False)[1]
                    print(f"{task} T={truncation} {mode} ({where}): length {summary['max_length_solved']} solved "
                          f"({time.monotonic() - started:.0f} s)", flush=True)
                    runs.append({**_kept(summary), "where": where})
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"settings": vars(args), "runs": runs}, indent=1))
    table = render(runs, columns)
    (folder / "table.md").write_text(table)
    print(table)


def _kept(summary: dict[str, Any]) -> dict[str, Any]:
    """What results.json keeps of a summary: its figures, the mean error of its last SETTLED batches (and the
    lengths they were at), and every CURVE_EVERY-th point of its curve."""
    keys = ("task", "mode", "truncation", "batches", "batch_size", "max_length_solved", "wall_seconds")
    last = summary["curve"][-SETTLED:]
    return {**{key: summary[key] for key in keys}, "final_bits_per_step": sum(p["bits_per_step"] for p in last) / len(last),
            "final_lengths": sorted({p["length"] for p in last}), "curve": summary["curve"][::CURVE_EVERY]}


def render(runs: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """One row per task and T: the longest length solved in each column, with the mean error in bits per step of
    the last SETTLED batches (on the next length) in brackets. The paper's figures are not quoted: they could not be
    checked against the paper from here."""
    header = "| task | T | " + " | ".join(f"{mode} ({where})" for mode, where in columns) + " |"
    lines = [header, "|" + "---|" * (2 + len(columns))]
    for task in dict.fromkeys(run["task"] for run in runs):
        for truncation in dict.fromkeys(run["truncation"] for run in runs if run["task"] == task):
            cells = [_cell(next(r for r in runs
                                if (r["task"], r["truncation"], r["mode"], r["where"]) == (task, truncation, mode, where)))
                     for mode, where in columns]
            lines.append(f"| {task} | {truncation} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(run: dict[str, Any]) -> str:
    return f"{run['max_length_solved']} ({run['final_bits_per_step']:.2f})"


if __name__ == "__main__":
    main()
