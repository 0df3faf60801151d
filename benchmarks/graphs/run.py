"""The three graph examples on workers against the same graph stepped in one process, at 2,000 steps.

For each example (examples/two_towers, two_heads, skip_connection) and mode (sg, cdni, backprop): the job as its
file says, run on one worker process per stage (`dni run`), and the same stages, synthesizers, data order and seed
stepped in this process with a window of one batch (`dni.coordinator.train.in_process.InProcessGraph`). Writes
results/results.json and prints the table of every head's test accuracy and the difference.
`--examples reference_chain` runs the reference MNIST chain (784-256-256-10) the same way, at the examples' rate
(Adam 3e-4), as a control: what running ahead costs a chain.
`--window 1 --workers-only` runs the workers again at the in-process window (results/results-window1.json), so that the
asynchrony's share of a difference is seen apart.

    PYTHONPATH=examples/two_heads python benchmarks/graphs/run.py --data-root DIR [--no-verify-data]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from dni.coordinator.data.dataset import test_batches, train_batches
from dni.coordinator.jobs.job import SHORTCUTS, load_job
from dni.coordinator.train.in_process import InProcessGraph
from dni.coordinator.train.run import job_data, run_job
from dni.spec import Mode

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXAMPLES = HERE.parents[1] / "examples"
GRAPHS = {"two_towers": "two_towers/two_towers.toml", "two_heads": "two_heads/two_heads.toml",
          "skip_connection": "skip_connection/skip_connection.toml"}
CONTROL = {"reference_chain": SHORTCUTS["mnist"]}  # the reference network, a chain, at the examples' rate: a control


def on_workers(job) -> dict[str, float]:
    folder, summary = run_job(job, show_progress=False)
    last = [json.loads(line) for line in (folder.path / "metrics.jsonl").read_text().splitlines()][-1]
    heads = last.get("heads") or {job.topology.names[job.topology.heads[0]]: last}
    return {name: scores["test_accuracy"] for name, scores in heads.items()}


def in_process(job) -> dict[str, float]:
    torch.set_num_threads(os.cpu_count() or 1)
    data = job_data(job)
    graph = InProcessGraph(job, tuple(data.input_shape), data.num_classes)
    for step, (_, x, labels) in enumerate(train_batches(data, job.batch_size, job.seed, job.iterations)):
        graph.step(step, x, labels)
    return graph.accuracy(list(test_batches(data, job.eval_batch_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="")
    parser.add_argument("--no-verify-data", action="store_true")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--modes", default="sg,cdni,backprop")
    parser.add_argument("--examples", default=",".join(GRAPHS), help=f"of {', '.join([*GRAPHS, *CONTROL])}")
    parser.add_argument("--results", default="runs/bench-graphs")
    parser.add_argument("--window", type=int, default=0, help="the workers' window (default: the job file's)")
    parser.add_argument("--workers-only", action="store_true", help="no in-process runs")
    parser.add_argument("--table", action="store_true", help="print the committed results as one table and exit")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    control = "-control" if set(args.examples.split(",")) <= set(CONTROL) else ""
    output = RESULTS / (f"results{control}-window{args.window}.json" if args.window else f"results{control}.json")
    rows = []
    for name in args.examples.split(","):
        for mode in args.modes.split(","):
            path = CONTROL[name] if name in CONTROL else EXAMPLES / GRAPHS[name]
            job = load_job(str(path), {"data_root": args.data_root, "iterations": args.iterations, "lr": 3e-4,
                                       "eval_every": 500, "results": args.results, "download": False,
                                       "verify_data": not args.no_verify_data})
            job = replace(job, mode=Mode(mode), window=args.window or job.window)
            started = time.perf_counter()
            workers = on_workers(job)
            middle = time.perf_counter()
            single = {} if args.workers_only else in_process(job)
            row = {"example": name, "mode": mode, "steps": args.iterations, "window": job.window, "workers": workers,
                   "in_process": single, "workers_seconds": middle - started, "in_process_seconds": time.perf_counter() - middle}
            rows.append(row)
            print(json.dumps(row), flush=True)
            output.write_text(json.dumps(rows, indent=1) + "\n")
    if not args.workers_only:
        print("| example | mode | head | workers | one process | difference (points) |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            for head, accuracy in row["workers"].items():
                other = row["in_process"][head]
                print(f"| {row['example']} | {row['mode']} | {head} | {accuracy:.2%} | {other:.2%} | {100 * (accuracy - other):+.2f} |")


def table() -> str:
    """results.json (the job files' window), results-window1.json and the control's, as one markdown table."""
    rows = [*_rows("results.json"), *_rows("results-control.json")]
    workers = {window: {(row["example"], row["mode"]): row["workers"] for row in
                        [*_rows(f"results-window{window}.json"), *_rows(f"results-control-window{window}.json")]}
               for window in (1, 4)}
    lines = ["| example | mode | head | one process | workers, window 1 | difference | workers, window 4 | difference |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for head, single in row["in_process"].items():
            cells = []
            for window in (1, 4):
                accuracy = workers[window].get((row["example"], row["mode"]), {}).get(head)
                if accuracy is None and window == row.get("window", 4):  # the job files' window
                    accuracy = row["workers"][head]
                cells += [f"{accuracy:.2%}", f"{100 * (accuracy - single):+.2f}"] if accuracy is not None else ["", ""]
            lines.append(f"| {row['example']} | {row['mode']} | {head} | {single:.2%} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _rows(name: str) -> list[dict]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else []


if __name__ == "__main__":
    main()
