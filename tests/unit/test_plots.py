"""coordinator/results/plots.py: accuracy per epoch, and each edge's synthetic loss where a run trained with sl."""
from __future__ import annotations

import json

import matplotlib.image

from dni.coordinator.results.plots import plot_accuracy, synthetic_losses


def lines(epochs, loss=None):
    workers = [{"stage": 0, "name": "left", "edges": {"head": {"synthesizer_loss": 0.1, **({"synthetic_loss": loss} if loss else {})}}},
               {"stage": 1, "name": "", "edges": {"head": {"synthesizer_loss": 0.2, **({"synthetic_loss": 2 * loss} if loss else {})}}},
               {"stage": 2, "name": "", "edges": {}}]
    return [{"epoch": epoch, "test_accuracy": 0.5 + epoch / 10, "workers": workers} for epoch in epochs]


def test_each_edges_synthetic_loss_is_a_curve_named_by_its_two_ends():
    curves = synthetic_losses(lines([1, 2], loss=0.5))
    assert curves == {"left -> head": [(1, 0.5), (2, 0.5)], "stage 1 -> head": [(1, 1.0), (2, 1.0)]}
    assert synthetic_losses(lines([1, 2])) == {}, "no synthetic loss outside sl"


def test_a_run_with_synthetic_losses_gets_a_second_panel(tmp_path):
    heights = []
    for name, loss in (("sg", None), ("sl", 0.5)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines([1, 2, 3], loss)))
        heights.append(matplotlib.image.imread(plot_accuracy([run], tmp_path / f"{name}.png")).shape[0])
    assert heights[1] > heights[0] * 1.4, heights
