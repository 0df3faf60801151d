"""Pictures people would rather look at than read: accuracy per epoch, one line per run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from coordinator.results import read_metrics  # noqa: E402


def run_label(run: Path) -> str:
    summary = run / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        return f"{data['mode']} ({data['test_accuracy']:.2%})"
    return json.loads((run / "job.json").read_text())["mode"]


def plot_accuracy(runs: Sequence[Path], output: Path, title: str = "Test accuracy") -> Path:
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for run in runs:
        records = read_metrics(run)
        epochs = [record["epoch"] for record in records]
        axes.plot(epochs, [record["test_accuracy"] for record in records], label=run_label(run))
    axes.set_title(title)
    axes.set_xlabel("Epoch")
    axes.set_ylabel("Test accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, output)


def save_figure(figure: plt.Figure, output: Path, **layout: Any) -> Path:
    """Lay out, write and release a figure (`layout` goes to tight_layout); every picture of ours is saved here."""
    figure.tight_layout(**layout)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
