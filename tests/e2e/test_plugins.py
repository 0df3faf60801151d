"""A stage written outside the core plugs in by import path or by entry point, runs as its own worker
process in the middle of a pipeline, and learns; so does a dataset plug-in (examples/own_dataset), and a bad one
stops `dni run` with exit code 2 before any worker starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dni import load_job, run_job
from tests.conftest import LEARNED, REPO, mlp_stages, small_job
from dni.coordinator.data.datasets import DATASET_GROUP
from dni.workers.build.registry import STAGE_GROUP, resolve_stage

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "gated_stage"
DATASET_EXAMPLE = REPO / "examples" / "own_dataset"
BLOBS_LEARNED = 0.6  # four classes, so chance is 0.25; the blobs overlap, and about 0.8 is the most any classifier gets


@pytest.fixture
def example_importable(monkeypatch, tmp_path):
    """The example folder on the path of this process and of the workers it starts, plus an
    installed distribution (a dist-info folder) that registers it under the dni.stages entry point."""
    dist_info = tmp_path / "site" / "dni_gated_stage-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: dni-gated-stage\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{STAGE_GROUP}]\ngated_linear = gated_stage:GatedLinear\n")
    paths = [str(EXAMPLE), str(tmp_path / "site")]
    for path in paths:
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("kind", ["gated_stage:GatedLinear", "gated_linear"])
def test_a_stage_from_outside_the_core_runs_in_the_middle_and_learns(kind, example_importable, data_root, tmp_path):
    from gated_stage import GatedLinear

    assert resolve_stage(kind) is GatedLinear
    stages = mlp_stages()
    stages[1] = {"kind": kind, "features": 64, "synthesizer": {"kind": "mlp", "hidden": 128}}
    job = small_job(data_root, tmp_path / "runs", stages=stages, mode="sg", iterations=300)
    _, summary = run_job(job, show_progress=False)
    assert summary["test_accuracy"] > LEARNED
    assert len({worker["pid"] for worker in summary["workers"]}) == 3


@pytest.mark.parametrize("mode, dataset", [("sg", "blobs:blobs"), ("backprop", "blobs")])
def test_the_example_dataset_plugin_trains_on_worker_processes_and_learns(mode, dataset, monkeypatch, tmp_path):
    """By import path, and by the name an installed distribution registers under dni.datasets."""
    dist_info = tmp_path / "site" / "dni_blobs-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: dni-blobs\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{DATASET_GROUP}]\nblobs = blobs:blobs\n")
    for path in (DATASET_EXAMPLE, tmp_path / "site"):
        monkeypatch.syspath_prepend(str(path))
    overrides = {"mode": mode, "dataset": dataset, "results": str(tmp_path / "runs"), "threads": 1}
    _, summary = run_job(load_job(str(DATASET_EXAMPLE / "blobs.toml"), overrides), show_progress=False)
    assert summary["test_accuracy"] > BLOBS_LEARNED, summary["test_accuracy"]
    assert len({worker["pid"] for worker in summary["workers"]}) == 3 and summary["dataset"] == dataset


def test_dni_run_with_a_bad_dataset_plugin_exits_2_naming_it_before_any_worker_starts(tmp_path):
    (tmp_path / "float_labels.py").write_text(
        "import numpy as np\n\ndef load(root):\n    x = np.zeros((8, 4), np.float32)\n"
        "    return (x, np.zeros(8, np.float32)), (x, np.zeros(8, np.float32))\n")
    job_file = tmp_path / "bad.toml"
    job_file.write_text((DATASET_EXAMPLE / "blobs.toml").read_text().replace('"blobs:blobs"', '"float_labels:load"'))
    result = subprocess.run([sys.executable, "-m", "dni", "run", str(job_file), "--results", str(tmp_path / "runs"), "--no-progress"],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.rstrip().endswith("ERROR dataset plug-in 'float_labels:load': y_train must be integer class labels, "
                                           "got float32"), result.stderr
    assert "Traceback" not in result.stderr and "listens at control" not in result.stderr, "no worker was started"
    assert not (tmp_path / "runs").exists(), "no run folder"
