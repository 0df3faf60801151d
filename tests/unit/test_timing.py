"""A worker's time accounting: activities add up to the wall time, and queued device work counts as compute."""
from __future__ import annotations

from dni.workers.timing import COMPUTE, Timeline


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
