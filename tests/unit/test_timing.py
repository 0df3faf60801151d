"""workers/timing.py: a worker's time accounting: activities add up to the wall time, queued device work counts as
compute, and spans for timelines travel as two arrays."""
from __future__ import annotations

import time

import numpy as np

import dni.workers.timing as timing
from dni.workers.timing import ACTIVITIES, COMPUTE, LOOP, Timeline, spans_from_arrays


def test_device_work_is_waited_for_at_the_end_of_compute_activities_only():
    settled = []
    timeline = Timeline(settle=lambda: settled.append(True))
    for activity in ("forward", "transport", "backward", "wait_input", "synthesizer", "control"):
        with timeline(activity):
            pass
    assert len(settled) == len(COMPUTE) == 3


def test_a_failed_activity_is_timed_without_waiting_for_the_device():
    settled = []
    timeline = Timeline(settle=lambda: settled.append(True))
    try:
        with timeline("forward"):
            raise RuntimeError("stage failed")
    except RuntimeError:
        pass
    assert settled == [] and timeline.totals["forward"] >= 0.0


def test_the_time_between_activities_counts_as_loop():
    timeline = Timeline()
    with timeline("forward"):
        pass
    time.sleep(0.05)
    with timeline("backward"):
        pass
    assert timeline.totals[LOOP] >= 0.05
    assert timeline.totals["forward"] < 0.05 and timeline.totals["backward"] < 0.05


def test_activities_add_up_to_the_wall_time():
    timeline = Timeline()
    for activity in ("wait_input", "forward", "transport"):
        with timeline(activity):
            time.sleep(0.02)
    counted, wall = sum(timeline.totals.values()), timeline.wall()
    assert 0.06 <= counted <= wall and wall - counted < 0.05  # only the moment since the last activity is uncounted


def test_spans_are_recorded_in_unix_time_only_when_asked():
    quiet = Timeline()
    with quiet("forward"):
        pass
    assert quiet.spans == []
    timeline = Timeline(record_spans=True)
    before = time.time()
    for activity in ("forward", "transport"):
        with timeline(activity):
            pass
    assert [activity for activity, _, _ in timeline.spans] == ["forward", "transport"]
    assert all(before - 0.01 <= start <= end <= time.time() + 0.01 for _, start, end in timeline.spans)


def test_spans_stop_at_the_cap(monkeypatch):
    monkeypatch.setattr(timing, "MAX_SPANS", 3)
    timeline = Timeline(record_spans=True)
    for _ in range(5):
        with timeline("control"):
            pass
    assert len(timeline.spans) == 3 and timeline.totals["control"] > 0


def test_spans_travel_as_two_arrays_and_come_back_the_same():
    timeline = Timeline(record_spans=True)
    timeline.spans = [("forward", 1.5, 2.25), ("wait_gradient", 2.25, 3.0), ("loop", 3.0, 3.125)]
    arrays = timeline.span_arrays()
    assert arrays["span_activity"].dtype == np.uint8 and arrays["span_time"].shape == (3, 2)
    assert arrays["span_activity"].tolist() == [ACTIVITIES.index("forward"), ACTIVITIES.index("wait_gradient"), ACTIVITIES.index("loop")]
    assert spans_from_arrays(arrays) == timeline.spans
    empty = Timeline(record_spans=True).span_arrays()
    assert (empty["span_activity"].shape, empty["span_time"].shape) == ((0,), (0, 2))
    assert spans_from_arrays(empty) == []


def test_restart_starts_counting_afresh_and_says_how_long_it_had_counted():
    timeline = Timeline(record_spans=True)
    with timeline("forward"):
        time.sleep(0.02)
    elapsed = timeline.restart()
    assert elapsed >= 0.02
    assert dict(timeline.totals) == {} and timeline.spans == [] and timeline.wall() < elapsed
