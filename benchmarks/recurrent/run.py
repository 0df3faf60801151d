"""The paper's Table 1 (copy, repeat copy): the longest length solved within a fixed budget, truncated BPTT vs DNI.

    python benchmarks/recurrent/run.py                               # T in 2,3,5; backprop and sg; both tasks
    python benchmarks/recurrent/run.py --truncations 2,8 --batches 2000

Each run trains an LSTM with a per-step linear readout in one process (`dni.coordinator.sequences`), from
length 1 up the curriculum (one more once 10 batches average under 0.15 bits per output step). Writes
`results.json` (every run's summary, its curve every CURVE_EVERY-th batch) and `table.md` into --results, and prints the table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dni.coordinator.sequences import SequenceSettings, train_sequences
from dni.coordinator.tasks import CopyTask, RepeatCopyTask
from dni.spec import Mode

CURVE_EVERY = 100
TASKS = {"copy": CopyTask, "repeat-copy": RepeatCopyTask}
# Jaderberg et al. 2017, Table 1, as remembered (not checked against the paper here): max length solved, LSTM.
PAPER = {("copy", "backprop"): {2: 7, 3: 8, 5: 8}, ("copy", "sg"): {2: 16, 3: 14, 5: 18},
         ("repeat-copy", "backprop"): {2: 7, 3: 5, 5: 23}, ("repeat-copy", "sg"): {2: 39, 3: 33, 5: 59}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="copy,repeat-copy")
    parser.add_argument("--truncations", default="2,3,5")
    parser.add_argument("--modes", default="backprop,sg")
    parser.add_argument("--batches", type=int, default=4000, help="batches of sequences per run (default 4000)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="benchmarks/recurrent/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for task in args.tasks.split(","):
        for truncation in map(int, args.truncations.split(",")):
            for mode in args.modes.split(","):
                settings = SequenceSettings(mode=Mode(mode), truncation=truncation, hidden=args.hidden,
                                            batch_size=args.batch_size, batches=args.batches, lr=args.lr, seed=args.seed)
                summary = train_sequences(TASKS[task](), settings)
                print(f"{task} T={truncation} {mode}: length {summary['max_length_solved']} solved "
                      f"({summary['wall_seconds']:.0f} s)", flush=True)
                runs.append({**summary, "curve": summary["curve"][::CURVE_EVERY]})
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"settings": vars(args), "runs": runs}, indent=1))
    table = render(runs)
    (folder / "table.md").write_text(table)
    print(table)


def render(runs: list[dict]) -> str:
    """One row per task and T: this run's longest length solved per mode, next to the paper's figure."""
    modes = sorted({run["mode"] for run in runs}, key=["backprop", "sg"].index)
    header = "| task | T | " + " | ".join(f"{mode} (here) | {mode} (paper*)" for mode in modes) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(modes))]
    for task in dict.fromkeys(run["task"] for run in runs):
        for truncation in dict.fromkeys(run["truncation"] for run in runs if run["task"] == task):
            cells = []
            for mode in modes:
                run = next(r for r in runs if (r["task"], r["truncation"], r["mode"]) == (task, truncation, mode))
                paper = PAPER.get((task, mode), {}).get(truncation, "-")
                cells += [str(run["max_length_solved"]), str(paper)]
            lines.append(f"| {task} | {truncation} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
