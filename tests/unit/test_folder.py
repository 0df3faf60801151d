"""coordinator/results/folder.py: a run's folder: one per run even within a second, the job as run, metrics lines appended or
rewritten whole, JSON files replaced atomically, every stage's weights in one file."""
from __future__ import annotations

import json
import types

import pytest
import torch

import dni.coordinator.results.folder as results
from dni.coordinator.jobs.job import job_as_table
from dni.coordinator.results.folder import NotARunError, RunFolder, read_metrics
from tests.conftest import small_job


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(results, "time", types.SimpleNamespace(strftime=lambda form: "20260101-120000"))


def test_a_run_folder_is_named_after_the_job_mode_and_time_and_holds_the_job(tmp_path, frozen_clock):
    job = small_job(tmp_path, tmp_path / "runs", mode="cdni")
    folder = RunFolder.create(job)
    assert folder.path == tmp_path / "runs" / "test-cdni-20260101-120000"
    assert json.loads((folder.path / "job.json").read_text()) == json.loads(json.dumps(job_as_table(job)))


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, frozen_clock):
    job = small_job(tmp_path, tmp_path / "runs")
    names = [RunFolder.create(job).path.name for _ in range(3)]
    assert names == ["test-sg-20260101-120000", "test-sg-20260101-120000-2", "test-sg-20260101-120000-3"]


def test_only_a_folder_with_a_job_opens_as_a_run(tmp_path):
    with pytest.raises(NotARunError, match=f"^{tmp_path} is not a run folder \\(no job.json\\)$"):
        RunFolder.open(tmp_path)
    (tmp_path / "job.json").write_text("{}")
    assert RunFolder.open(tmp_path).metrics_path == tmp_path / "metrics.jsonl"


def test_metrics_lines_are_appended_and_rewritten_whole(tmp_path):
    folder = RunFolder(tmp_path)
    for step in (100, 200, 300):
        folder.append_metrics({"step": step, "test_accuracy": step / 1000})
    assert [record["step"] for record in read_metrics(tmp_path)] == [100, 200, 300]
    folder.rewrite_metrics([{"step": 100, "test_accuracy": 0.1}])
    assert read_metrics(tmp_path) == [{"step": 100, "test_accuracy": 0.1}]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_blank_lines_in_metrics_are_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\n{"step": 2}\n')
    assert read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]


def test_json_files_are_replaced_atomically(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_json("summary.json", {"status": "failed"})
    folder.write_json("summary.json", {"status": "complete", "steps": 3})
    assert json.loads(folder.summary_path.read_text()) == {"status": "complete", "steps": 3}
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]


def test_every_stage_state_goes_into_one_model_file(tmp_path):
    RunFolder(tmp_path).save_state([{"module.1.weight": torch.ones(2)}, {"module.1.weight": torch.zeros(3)}])
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sorted(state) == ["stage0", "stage1"]
    assert state["stage0"]["module.1.weight"].tolist() == [1.0, 1.0] and state["stage1"]["module.1.weight"].shape == (3,)


def test_a_run_left_by_a_coordinator_that_is_gone_is_marked_killed_and_resumable(tmp_path, caplog):
    from dni.coordinator.train.checkpoints import Position
    from dni.coordinator.results.folder import mark_abandoned_runs
    from dni.coordinator.train.segments import Segments
    from dni.lifetime import OWNER, claim

    folder = RunFolder.create(small_job(tmp_path, tmp_path / "runs"))
    with Segments(folder.path).recording(0):
        pass  # as far as a coordinator got before SIGKILL: its segment is still "running"
    folder.checkpoints.record(Position(200, 2))
    folder.checkpoints.begin()
    folder.checkpoints.staged(0).write_text("uncommitted")
    (folder.path / OWNER).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": __import__("socket").gethostname()}))
    alive = RunFolder.create(small_job(tmp_path, tmp_path / "runs", name="other"))
    claim(alive.path)  # this process: alive

    mark_abandoned_runs(tmp_path / "runs")

    summary = json.loads(folder.summary_path.read_text())
    assert (summary["status"], summary["resume_from_step"]) == ("killed", 200)
    assert not folder.checkpoints.pending.exists() and not (folder.path / OWNER).exists()
    assert [segment.status for segment in Segments(folder.path).all] == ["killed"]
    assert f"--resume {folder.path} continues from step 200" in caplog.text
    assert (alive.path / OWNER).exists() and not alive.summary_path.exists()
