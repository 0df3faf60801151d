"""coordinator/feeds.py: the one place a stage's assignment is made, for a dataset job and a sequence job alike."""
from __future__ import annotations

from pathlib import Path

from dni.coordinator.checkpoints import Checkpoints
from dni.coordinator.feeds import stage_assignment
from dni.coordinator.job import load_job
from dni.protocol import Endpoints
from tests.conftest import small_job

ENDPOINTS = [Endpoints(f"ipc://s{stage}.control", f"ipc://s{stage}.forward", f"ipc://s{stage}.backward") for stage in range(3)]


def test_a_stage_is_told_its_input_its_neighbours_and_the_readouts_width_and_loss(tmp_path):
    job = small_job(tmp_path / "no-data", tmp_path / "runs", window=2)
    middle = stage_assignment(job, 1, (64,), 10, "cross_entropy", "j", "ipc://c", ENDPOINTS, None)
    assert (middle.job, middle.index, middle.num_stages, middle.input_shape, middle.num_classes) == ("j", 1, 3, (64,), 10)
    assert (middle.upstream, middle.downstream, middle.coordinator) == ("ipc://s0.backward", "ipc://s2.forward", "ipc://c")
    assert (middle.window, middle.truncation, middle.discount, middle.restore) == (2, 0, 1.0, None)
    first, last = (stage_assignment(job, index, (1, 28, 28), 10, "cross_entropy", "j", "ipc://c", ENDPOINTS, None)
                   for index in (0, 2))
    assert (first.upstream, last.downstream, first.spec, last.spec) == (None, None, job.stages[0], job.stages[2])


def test_a_sequence_stage_is_told_the_truncation_and_where_to_restore_from(tmp_path):
    job = load_job("copy", {"discount": 0.5})
    checkpoints = Checkpoints(Path(tmp_path))
    readout = stage_assignment(job, 1, (64,), 8, "bits", "j", "ipc://c", ENDPOINTS[:2], checkpoints)
    assert (readout.truncation, readout.discount, readout.loss, readout.num_classes) == (3, 0.5, "bits", 8)
    assert (readout.downstream, readout.restore) == (None, str(tmp_path / "stage1.pt"))
