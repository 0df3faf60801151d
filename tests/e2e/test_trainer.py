"""The coordinator's main loop, on real workers: here, a run that stops at its time limit."""
from __future__ import annotations

import pytest

from dni.coordinator.results.folder import read_metrics
from dni import run_job
from tests.conftest import small_job

pytestmark = pytest.mark.e2e


def test_a_time_limit_stops_training_with_a_final_evaluation(data_root, tmp_path):
    job = small_job(data_root, tmp_path, mode="sg", iterations=1_000_000, eval_every=50, time_limit=3)
    folder, summary = run_job(job, show_progress=False)
    records = read_metrics(folder.path)
    assert summary["stopped_at_time_limit"]
    assert 0 < summary["steps"] < 1_000_000
    assert records[-1]["step"] == summary["steps"]
