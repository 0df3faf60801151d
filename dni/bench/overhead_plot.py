"""The overhead benchmark's picture: where each process's time per step goes, beside the single process's step."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dni.coordinator.results.plots import save_figure  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_overhead"]

PARTS = (("compute_us", "compute", "#1f77b4"), ("machinery_us", "machinery (messages, checks, loop)", "#d62728"),
         ("waiting_us", "waiting", "#d9d9d9"))


def plot_overhead(report: dict[str, Any], output: Path) -> Path:
    """One panel per mode: a bar per worker split into compute, machinery and waiting (microseconds per step),
    the coordinator's CPU per step, and lines at the pipeline's and the single process's step times."""
    results = report["results"]
    figure, axes = plt.subplots(len(results), 1, figsize=(10, 1.0 + 1.6 * len(results)), squeeze=False)
    for axis, result in zip(axes[:, 0], results):
        rows = [f"stage {worker['stage']}" for worker in result["workers"]] + ["coordinator"]
        left = [0.0] * len(rows)
        for key, label, colour in PARTS:
            widths = [worker[key] for worker in result["workers"]] + [result["coordinator_cpu_us_per_step"] if key == "machinery_us" else 0.0]
            axis.barh(rows, widths, left=left, color=colour, label=label)
            left = [a + b for a, b in zip(left, widths)]
        axis.axvline(result["single_step_us"], color="k", linestyle="--", label="single-process step")
        axis.axvline(1e6 / result["pipeline_steps_per_second"], color="g", label="pipeline step")
        axis.invert_yaxis()
        axis.set_title(f"{result['mode']}: pipeline {result['pipeline_steps_per_second']:.0f} steps/s, single process "
                       f"{result['single_steps_per_second']:.0f} steps/s ({result['ratio']:.2f}x)", loc="left", fontsize=10)
    axes[-1, 0].set_xlabel("microseconds per step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8)
    figure.suptitle(f"784-{report['width']}-{report['width']}-10, synthesizers {report['synthesizer_width']} wide", x=0.01,
                    ha="left", fontsize=11)
    return save_figure(figure, output, rect=(0, 0, 1, 0.93))
