"""A stage written outside the core plugs in by import path or by entry point, runs as its own worker
process in the middle of a pipeline, and learns."""
from __future__ import annotations

import os

import pytest

from dni import run_job
from tests.conftest import LEARNED, REPO, mlp_stages, small_job
from dni.workers.registry import STAGE_GROUP, resolve_stage

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "gated_stage"


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
