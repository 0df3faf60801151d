"""Pictures people would rather look at than read: accuracy per epoch, one line per run; a sequence job's curve."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dni.coordinator.results.folder import NotARunError, read_metrics  # noqa: E402
from dni.files import replace_atomically  # noqa: E402
from dni.coordinator.data.tasks import SOLVED_BITS  # noqa: E402

__all__ = ["check_runs", "default_output", "plot_accuracy", "plot_curves", "plot_runs", "run_label", "sequence_curve", "save_figure",
           "synthetic_losses"]


def check_runs(runs: Sequence[Path]) -> None:
    """Raise NotARunError naming the first folder that is not a run (one with a metrics.jsonl, or a finished
    sequence job's curve), or runs of both kinds, which share no axes."""
    for run in runs:
        if not run.exists():
            raise NotARunError(f"{run} does not exist")
        if not ((run / "metrics.jsonl").is_file() or sequence_curve(run) is not None):
            raise NotARunError(f"{run} is not a run folder (it has no metrics.jsonl, nor a finished sequence job's curve)")
    if len({sequence_curve(run) is None for run in runs}) > 1:
        raise NotARunError("a sequence job's curve and a dataset job's accuracy share no axes: plot them apart")


def sequence_curve(run: Path) -> Optional[list[dict[str, Any]]]:
    """A finished sequence job's curve (its summary.json's), else None."""
    summary = run / "summary.json"
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("curve")


def plot_runs(runs: Sequence[Path], output: Path, title: Optional[str] = None) -> Path:
    """`dni plot`: the test accuracy of dataset jobs, or the curves of sequence jobs."""
    if sequence_curve(runs[0]) is None:
        return plot_accuracy(runs, output, title or "Test accuracy")
    return plot_curves({run_label(run): sequence_curve(run) or [] for run in runs}, output, title or "Sequence jobs")


def default_output(runs: Sequence[Path]) -> Path:
    """plot-<timestamp>.png beside the first run (in its parent folder, such as runs/), never over an older plot."""
    first = runs[0]
    folder = first.resolve().parent if first.name in ("", ".", "..") else first.parent
    base = folder / f"plot-{time.strftime('%Y%m%d-%H%M%S')}"
    output, suffix = base.with_suffix(".png"), 1
    while output.exists():
        suffix += 1
        output = folder / f"{base.name}-{suffix}.png"
    return output


def run_label(run: Path) -> str:
    """The run folder's name, with its mode and final test accuracy where the run recorded them."""
    summary, job = run / "summary.json", run / "job.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        if data.get("status", "complete") != "complete":
            return f"{run.name} ({data['mode']}, {data['status']})"
        if "max_length_solved" in data:
            return f"{run.name} ({data['mode']}, T = {data['truncation']}, length {data['max_length_solved']} solved)"
        if "test_bits_per_char" in data:
            return f"{run.name} ({data['mode']}, T = {data['truncation']}, {data['test_bits_per_char']:.3f} bits/char)"
        return f"{run.name} ({data['mode']}, {data['test_accuracy']:.2%})"
    if job.is_file():
        return f"{run.name} ({json.loads(job.read_text())['mode']})"
    return run.name


def plot_accuracy(runs: Sequence[Path], output: Path, title: str = "Test accuracy") -> Path:
    """Test accuracy per epoch, one line per run (a graph's: its first head's); where runs trained with synthetic
    losses (`sl`), a second panel of each edge's synthetic loss: what the rest of the graph makes of what travels
    along that edge, the measure of each branch's part of the input."""
    records = {run: read_metrics(run) for run in runs}
    losses = {run: synthetic_losses(lines) for run, lines in records.items()}
    rows = 2 if any(losses.values()) else 1
    figure, panels = plt.subplots(rows, 1, figsize=(9, 5.5 if rows == 1 else 8.5), sharex=True, squeeze=False)
    axes = panels[0][0]
    for run, lines in records.items():
        axes.plot([record["epoch"] for record in lines], [record["test_accuracy"] for record in lines], label=run_label(run))
    axes.set_title(title)
    axes.set_ylabel("Test accuracy")
    if rows == 2:
        edges = panels[1][0]
        for run, curves in losses.items():
            for edge, points in curves.items():
                edges.plot(*zip(*points), label=f"{run.name}: {edge}" if len(runs) > 1 else edge)
        edges.set_ylabel("synthetic loss per edge (nats)")
        edges.legend(fontsize="small")
    panels[-1][0].set_xlabel("Epoch")
    for row in panels:
        row[0].grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, output)


def synthetic_losses(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each edge's synthetic loss (`sl`) at every metrics line, as (epoch, loss) points, by edge ("left -> head")."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        for worker in record.get("workers", []):
            producer = worker.get("name") or f"stage {worker.get('stage')}"
            for consumer, values in worker.get("edges", {}).items():
                if "synthetic_loss" in values:
                    curves.setdefault(f"{producer} -> {consumer}", []).append((record["epoch"], values["synthetic_loss"]))
    return curves


def plot_curves(curves: dict[str, Sequence[dict[str, Any]]], output: Path, title: str) -> Path:
    """Sequence jobs' training curves, one line per run: bits per scored step and the curriculum's length,
    batch by batch."""
    figure, (error, length) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for label, curve in curves.items():
        batches = [point["batch"] for point in curve]
        error.plot(batches, [point["bits_per_step"] for point in curve], linewidth=0.8, label=label)
        length.plot(batches, [point["length"] for point in curve], label=label)
    error.axhline(SOLVED_BITS, color="grey", linestyle="--", linewidth=0.8, label=f"solved below {SOLVED_BITS} bits")
    error.set_ylabel("bits per scored step")
    error.set_yscale("log")
    error.legend(fontsize="small")
    length.set_ylabel("sequence length")
    length.set_xlabel("batch of sequences")
    for axes in (error, length):
        axes.grid(alpha=0.3)
    error.set_title(title)
    return save_figure(figure, output)


def save_figure(figure: plt.Figure, output: Path, **layout: Any) -> Path:
    """Lay out, write and release a figure (`layout` goes to tight_layout); every picture of ours is saved here,
    whole or not at all (a full disk leaves the previous picture, not an empty file)."""
    figure.tight_layout(**layout)
    try:
        replace_atomically(output, lambda partial: figure.savefig(partial, dpi=110, format=output.suffix.lstrip(".") or "png"))
    finally:
        plt.close(figure)
    return output
