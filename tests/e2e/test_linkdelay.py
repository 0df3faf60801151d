"""The emulated link delay end to end: real workers on real sockets, a smoke job, 0 and 20 ms per hop.

Speeds are the benchmark's business (benchmarks/linkdelay); here only what the
delay must do whatever the machine's load: a locked step of a 3-stage pipeline
crosses 4 delayed hops (activations to stages 1 and 2, gradients back to 1 and
0), so N locked steps cannot take less than N x 4 x D; locked updates do not
depend on the delay (what the benchmark's projection rests on), so both locked
runs evaluate alike; every worker and the coordinator's feed were told the
delay; an unlocked stage keeps taking batches while earlier ones' targets are
still on the link; and each run stops once it is accurate enough.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dni.coordinator.results.folder import read_metrics

pytestmark = pytest.mark.e2e

DELAY_MS = 20.0
ITERATIONS = 300
TARGET = 0.6  # locked backprop is there by step 10 (lr 1e-3, batch 64) and stops; sg takes longer, and varies with timing
LOCKED_HOPS = 4  # 3 stages: 0 -> 1 -> 2 forward, 2 -> 1 -> 0 backward


def test_a_locked_step_pays_every_delayed_hop_while_an_unlocked_stage_runs_ahead(data_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dni", "bench", "speedup", "--job", "mnist-smoke", "--iterations", str(ITERATIONS), "--eval-every",
         "10", "--modes", "backprop,sg", "--link-delay-ms", f"0,{DELAY_MS:g}", "--targets", str(TARGET), "--time-cap", "60",
         "--data-root", str(data_root), "--results", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = next(tmp_path.glob("bench-speedup-*"))
    report = json.loads((folder / "link-delay.json").read_text())
    rows = {(row["mode"], row["delay_ms"]): row for row in report["rows"]}
    assert set(rows) == {("backprop", 0.0), ("backprop", DELAY_MS), ("sg", 0.0), ("sg", DELAY_MS)}
    for (mode, delay), row in rows.items():
        print(f"{mode} at {delay:g} ms: {row['steps']} steps in {row['wall_seconds']:.2f} s, "
              f"{1000 * row['batch_size'] / row['steady_samples_per_second']:.1f} ms per steady step")
        assert row["how"] == "measured" and 0 < row["steps"] <= ITERATIONS
    for delay in (0.0, DELAY_MS):  # a run stops once an evaluation reaches the target
        assert rows[("backprop", delay)]["stopped"] == "accuracy" and rows[("backprop", delay)]["best_test_accuracy"] >= TARGET

    locked = rows[("backprop", DELAY_MS)]
    assert locked["wall_seconds"] >= locked["steps"] * LOCKED_HOPS * DELAY_MS / 1000
    undelayed, delayed = (read_metrics(Path(rows[("backprop", delay)]["run"])) for delay in (0.0, DELAY_MS))
    common = min(len(undelayed), len(delayed)) - 1  # the last evaluation is where each run happened to stop
    assert common >= 1 and [(r["step"], r["test_accuracy"]) for r in undelayed[:common]] == \
        [(r["step"], r["test_accuracy"]) for r in delayed[:common]]

    for mode in ("backprop", "sg"):
        summary = json.loads((Path(rows[(mode, DELAY_MS)]["run"]) / "summary.json").read_text())
        assert summary["link_delay_ms"] == DELAY_MS and "emulated" in summary["link"]
        assert summary["feed_link"]["delay_ms"] == DELAY_MS and summary["feed_link"]["sent"] >= summary["steps"]
        for worker in summary["worker_metrics"]:
            assert worker["link"]["delay_ms"] == DELAY_MS and worker["link"]["sent"] >= summary["steps"]
            assert worker["link"]["held"] == 0  # all delivered before the run's last checkpoint

    stage0 = rows[("sg", DELAY_MS)]["staleness"][0]  # batches stage 0 took while this one's target was in flight
    assert any(int(ran_ahead) >= 1 for ran_ahead in stage0), stage0

    assert "emulated" in result.stdout and "torch GPipe / 1F1B: not run" in result.stdout
    assert (folder / "link-delay.png").stat().st_size > 10_000
