"""coordinator/train/checkpoints.py: where the last consistent cut left the run, beside the stages' files; a cut is committed
whole or not at all."""
from __future__ import annotations

import json

from dni.coordinator.train.checkpoints import Checkpoints, Position


def test_a_run_without_a_checkpoint_starts_at_the_beginning(tmp_path):
    assert Checkpoints(tmp_path / "checkpoints").position() == Position(0, 0, {})
    assert not (tmp_path / "checkpoints").exists()


def test_a_recorded_position_reads_back_and_replaces_the_previous_one(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.record(Position(100, 1, {"loss_sum": 2.5, "correct": 3, "count": 8}))
    checkpoints.record(Position(200, 2, {"loss_sum": 0.5, "correct": 1, "count": 4}))
    assert checkpoints.position() == Position(200, 2, {"loss_sum": 0.5, "correct": 1, "count": 4})
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["coordinator.json"], "no partial file left"
    assert json.loads((tmp_path / "checkpoints" / "coordinator.json").read_text())["step"] == 200


def test_each_stage_has_its_file_beside_the_position(tmp_path):
    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints")
    assert [checkpoints.stage(index) for index in range(2)] == [
        tmp_path / "run" / "checkpoints" / "stage0.pt", tmp_path / "run" / "checkpoints" / "stage1.pt"]
    assert checkpoints.position_path == tmp_path / "run" / "checkpoints" / "coordinator.json"


def test_a_checkpoint_is_committed_whole_or_not_at_all(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    for step in (100, 200):
        checkpoints.begin()
        for stage in range(3):
            checkpoints.staged(stage).write_text(str(step))
        checkpoints.record(Position(step, step // 100))
    assert [checkpoints.stage(stage).read_text() for stage in range(3)] == ["200"] * 3
    checkpoints.begin()  # a stage dies after stage 0 saved step 300: not committed
    checkpoints.staged(0).write_text("300")
    assert checkpoints.position().step == 200
    assert [checkpoints.stage(stage).read_text() for stage in range(3)] == ["200"] * 3
    checkpoints.begin()  # the coordinator dies after the commit point, before every file moved: finished on reading
    for stage in range(3):
        checkpoints.staged(stage).write_text("400")
    (checkpoints.pending / "coordinator.json").write_text(json.dumps({"step": 400, "evaluations": 4, "tally": {}}))
    assert checkpoints.position().step == 400
    assert [checkpoints.stage(stage).read_text() for stage in range(3)] == ["400"] * 3
    assert sorted(path.name for path in checkpoints.directory.iterdir()) == [
        "coordinator.json", "stage0.pt", "stage1.pt", "stage2.pt"]


def test_a_failed_checkpoint_is_discarded_and_the_last_committed_one_stays(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.begin()
    checkpoints.staged(0).write_text("100")
    checkpoints.record(Position(100, 1))
    checkpoints.begin()
    checkpoints.staged(0).write_text("a stage saved, the next ran out of disk")
    checkpoints.discard_uncommitted()
    assert not checkpoints.pending.exists(), "its disk is free again"
    assert (checkpoints.position().step, checkpoints.stage(0).read_text()) == (100, "100")
