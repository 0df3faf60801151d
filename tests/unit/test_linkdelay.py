"""protocol/linkdelay.py: waits that poll no longer than until a due time, and how reports name the link."""
from __future__ import annotations

import pytest

from dni.protocol import linkdelay
from dni.protocol.linkdelay import describe, poll_within, split_wait


@pytest.mark.parametrize("seconds, expected", [
    (0.0251, (0.0, 25)),  # whole milliseconds are polled; the rest waits for the next turn of the loop
    (0.001, (0.0, 1)),
    (0.0004, (0.0004, 0)),  # under a millisecond: slept, then polled without waiting (not rounded up, not spun)
    (0.0, (0.0, 0)),
    (-0.002, (0.0, 0)),
])
def test_split_wait_never_polls_past_the_wait(seconds, expected):
    sleep, milliseconds = split_wait(seconds)
    assert (sleep, milliseconds) == (pytest.approx(expected[0]), expected[1])
    assert sleep + milliseconds / 1000 <= max(0.0, seconds) + 1e-12


def test_poll_within_sleeps_the_part_under_a_millisecond_then_polls(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(linkdelay.time, "sleep", slept.append)
    assert poll_within(lambda milliseconds: milliseconds, 0.0004) == 0 and slept == [pytest.approx(0.0004)]
    assert poll_within(lambda milliseconds: milliseconds, 0.0072) == 7 and len(slept) == 1


def test_every_report_calls_an_added_delay_emulated():
    assert describe(0) == "no added delay"
    assert describe(20.0) == "emulated link delay 20 ms per hop (held in the sender's outbox)"
