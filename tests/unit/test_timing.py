"""workers/stage/timing.py: a worker's time accounting by laps: each lap is charged to its activity, the activities add up
to the wall time, spans are kept only when asked and travel as two arrays."""
from __future__ import annotations

import time

import numpy as np

import dni.workers.stage.timing as timing
from dni.workers.stage.timing import ACTIVITIES, COMPUTE, GROUPS, TRANSPORT, WAITING, Timeline, grouped, spans_from_arrays


def test_a_lap_charges_the_time_since_the_previous_lap_to_its_activity():
    timeline = Timeline()
    time.sleep(0.03)
    timeline.lap("wait_input")
    timeline.lap("forward")
    assert timeline.totals["wait_input"] >= 0.03
    assert timeline.totals["forward"] < 0.03


def test_activities_add_up_to_the_wall_time():
    timeline = Timeline()
    for activity in ("wait_input", "forward", "send"):
        time.sleep(0.02)
        timeline.lap(activity)
    counted, wall = sum(timeline.totals.values()), timeline.wall()
    assert 0.06 <= counted <= wall and wall - counted < 0.05  # only the moment since the last lap is uncounted


def test_every_activity_belongs_to_exactly_one_group_and_groups_sum_their_members():
    members = [activity for group in GROUPS.values() for activity in group]
    assert sorted(members) == sorted(ACTIVITIES) and len(members) == len(set(members))
    assert set(COMPUTE) | set(TRANSPORT) | set(WAITING) < set(ACTIVITIES)
    assert grouped({"forward": 1.0, "optimizer": 0.5, "decode": 0.25, "wait_gradient": 2.0}) == {
        "compute": 1.5, "transport": 0.25, "waiting": 2.0, "control": 0.0, "loop": 0.0}


def test_spans_are_recorded_in_unix_time_only_when_asked():
    quiet = Timeline()
    quiet.lap("forward")
    assert quiet.spans == []
    before = time.time()
    timeline = Timeline(record_spans=True)
    for activity in ("forward", "send"):
        timeline.lap(activity)
    assert [activity for activity, _, _ in timeline.spans] == ["forward", "send"]
    assert all(before - 0.01 <= start <= end <= time.time() + 0.01 for _, start, end in timeline.spans)
    assert timeline.spans[0][2] == timeline.spans[1][1], "laps tile the time: each starts where the last ended"


def test_spans_stop_at_the_cap(monkeypatch):
    monkeypatch.setattr(timing, "MAX_SPANS", 3)
    timeline = Timeline(record_spans=True)
    for _ in range(5):
        timeline.lap("control")
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
    time.sleep(0.02)
    timeline.lap("forward")
    elapsed = timeline.restart()
    assert elapsed >= 0.02
    assert not any(timeline.totals.values()) and timeline.spans == [] and timeline.wall() < elapsed


def test_without_a_device_clock_there_is_no_device_time():
    assert Timeline().device_totals() == {}
