"""Timeline and scaling pictures: where each worker's time goes, locked above unlocked."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dni.coordinator.results.plots import save_figure  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dni.workers.stage.timing import TRANSPORT  # noqa: E402

__all__ = ["COLOURS", "plot_scaling", "plot_timelines", "window_of"]

COLOURS = {
    "forward": "#1f77b4", "synthetic": "#17becf", "backward": "#ff7f0e", "synthesizer": "#2ca02c", "optimizer": "#bcbd22",
    "transport": "#9467bd", "wait_input": "#d9d9d9", "wait_gradient": "#f4a6a6", "wait_send": "#e377c2", "control": "#8c564b",
}
SHOWN_AS = {activity: "transport" for activity in TRANSPORT}  # the parts of moving a message, drawn as one


def window_of(spans: list[list[list[Any]]], start_fraction: float, duration: float) -> tuple[float, float]:
    """A window of `duration` seconds starting `start_fraction` of the way through the training (first to last forward)."""
    forward = [span for worker in spans for span in worker if span[0] == "forward"]
    first, last = min(span[1] for span in forward), max(span[2] for span in forward)
    begin = first + start_fraction * max(0.0, last - first - duration)
    return begin, begin + duration


def plot_timelines(runs: Sequence[tuple[str, list[list[list[Any]]]]], output: Path, duration: float) -> Path:
    """One panel per run (e.g. backprop above sg), one row per worker, over the same time span."""
    figure, axes = plt.subplots(len(runs), 1, figsize=(12, 1.2 + 0.7 * sum(len(s) for _, s in runs)), sharex=True, squeeze=False)
    for axis, (label, spans) in zip(axes[:, 0], runs):
        begin, end = window_of(spans, 0.3, duration)
        for row, worker in enumerate(spans):
            for activity, colour in COLOURS.items():
                bars = [(max(s, begin) - begin, min(e, end) - max(s, begin)) for a, s, e in worker
                        if SHOWN_AS.get(a, a) == activity and e > begin and s < end]
                if bars:
                    axis.broken_barh(bars, (row - 0.4, 0.8), facecolors=colour)
        axis.set_yticks(range(len(spans)), [f"stage {i}" for i in range(len(spans))])
        axis.invert_yaxis()
        axis.set_title(label, loc="left", fontsize=10)
        axis.set_xlim(0, duration)
    axes[-1, 0].set_xlabel("seconds")
    figure.legend(handles=[Patch(color=c, label=a) for a, c in COLOURS.items()], loc="upper right", ncol=len(COLOURS), fontsize=8)
    return save_figure(figure, output, rect=(0, 0, 1, 0.95))


def plot_scaling(points: Sequence[dict[str, Any]], output: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    stages = sorted({p["stages"] for p in points})
    axis.plot(stages, stages, "k--", alpha=0.4, label="ideal (L x)")
    for emulated, marker, text in ((False, "o", "real compute"), (True, "s", "emulated device time")):
        chosen = [p for p in points if p["emulated"] == emulated]
        if chosen:
            axis.plot([p["stages"] for p in chosen], [p["speedup"] for p in chosen], marker, markersize=9, label=text)
    axis.set_xlabel("stages (L)")
    axis.set_ylabel("speedup: sg throughput / backprop throughput")
    axis.set_xticks(stages)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, output)
