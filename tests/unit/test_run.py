"""coordinator/train/run.py: a resumed run says so, and from where, before its workers start; a torchrun group's first
attempt, which passes its new folder as the one to resume, says nothing."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dni.coordinator.results.folder import RunFolder
from dni.coordinator.train.run import _say_resuming
from dni.coordinator.train.segments import SEGMENTS


@pytest.fixture
def folder(tmp_path: Path) -> RunFolder:
    (tmp_path / "checkpoints").mkdir()
    return RunFolder(tmp_path)


def said(caplog: pytest.LogCaptureFixture, folder: RunFolder, unit: str = "step") -> list[tuple[str, str]]:
    caplog.set_level(logging.INFO, logger="dni.run")
    _say_resuming(folder, unit)
    return [(record.levelname, record.getMessage()) for record in caplog.records]


def test_a_resumed_run_names_its_folder_and_its_checkpoints_step(folder, caplog):
    (folder.path / "checkpoints" / "coordinator.json").write_text(json.dumps({"step": 2474, "evaluations": 24}))
    assert said(caplog, folder) == [("INFO", f"resuming {folder.path} from step 2474 (checkpoint)")]


def test_a_sequence_job_resumes_from_a_batch(folder, caplog):
    (folder.path / "checkpoints" / "coordinator.json").write_text(json.dumps({"step": 96}))
    assert said(caplog, folder, "batch") == [("INFO", f"resuming {folder.path} from batch 96 (checkpoint)")]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(folder, caplog):
    (folder.path / SEGMENTS).write_text(json.dumps([{"from_step": 0, "to_step": 0, "status": "interrupted"}]))
    assert said(caplog, folder) == [("INFO", f"resuming {folder.path} from the start: it stopped before its first checkpoint")]


def test_a_folder_nothing_ran_in_yet_is_no_resume(folder, caplog):
    assert said(caplog, folder) == []
