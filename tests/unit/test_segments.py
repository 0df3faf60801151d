"""coordinator/train/segments.py: each start of a run is a segment, saved as it goes; a segment whose coordinator died
is marked killed by the next, and the totals add every segment up."""
from __future__ import annotations

import json

import pytest

from dni.coordinator.train.segments import SEGMENTS, Segments


def test_a_segment_is_saved_running_and_ends_with_how_it_ended(tmp_path):
    segments = Segments(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with segments.recording(from_step=0) as segment:
            assert json.loads((tmp_path / SEGMENTS).read_text())[0]["status"] == "running"
            segment.recoveries, segment.to_step = 2, 40
            segments.save()
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError):
        with Segments(tmp_path).recording(from_step=40):
            raise RuntimeError("boom")
    saved = json.loads((tmp_path / SEGMENTS).read_text())
    assert [(s["from_step"], s["to_step"], s["recoveries"], s["status"]) for s in saved] == [
        (0, 40, 2, "interrupted"), (40, 40, 0, "failed")]


def test_a_segment_left_running_was_killed_and_the_totals_count_it(tmp_path):
    first = Segments(tmp_path)
    with first.recording(from_step=0) as segment:
        segment.recoveries, segment.resent_batches = 3, 70
        first.save()  # then the coordinator is SIGKILLed: the segment stays "running"
    second = Segments(tmp_path)
    with second.recording(from_step=200) as segment:
        segment.recoveries, segment.resent_batches = 1, 5
        second.save("complete")
    totals = second.totals()
    assert [s["status"] for s in totals["segments"]] == ["killed", "complete"]
    assert (totals["recoveries"], totals["resent_batches"]) == (4, 75)
    assert totals["total_wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in totals["segments"]))


def test_an_unreadable_record_starts_afresh(tmp_path, caplog):
    (tmp_path / SEGMENTS).write_text("{not json")
    assert Segments(tmp_path).all == []
    assert "unreadable" in caplog.text
