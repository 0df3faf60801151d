"""protocol/refusals.py: refused input is counted in full and logged within limits: the first few of a kind, then a summary per interval."""
from __future__ import annotations

import logging

from dni.protocol.refusals import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_counted_whole_but_logged_in_a_few_lines(caplog):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), "refused", first=3, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "test.refusals"):
        for index in range(10_000):
            clock.now = index / 1000  # 10,000 refusals in 10 s
            refusals.refuse("ProtocolError", f"bad header {index}")
        refusals.refuse("Rejected", "foreign job")
        clock.now = 10.5
        refusals.summarise_due()
    lines = [record.getMessage() for record in caplog.records]
    assert lines[:3] == [f"refused (ProtocolError #{n}): bad header {n - 1}" for n in (1, 2, 3)]
    assert lines[3] == "refused (Rejected #1): foreign job"
    assert lines[4] == "refused 9997 more (ProtocolError) in the last 10s, 10000 in all; the latest: bad header 9999"
    assert len(lines) == 5
    assert refusals.counts == {"ProtocolError": 10_000, "Rejected": 1} and refusals.total == 10_001


def test_refusals_reported_in_bulk_count_as_many():
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), "refused", first=5, clock=clock)
    refusals.refuse("by stage 1", "see its log", 560)
    refusals.refuse("by stage 1", "see its log", 40)
    assert refusals.counts["by stage 1"] == 600 and refusals.total == 600


def test_after_a_summary_the_next_waits_a_full_interval(caplog):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), "refused", first=1, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "test.refusals"):
        for now in (0.0, 1.0, 10.0, 12.0, 19.0, 20.0):
            clock.now = now
            refusals.refuse("Rejected", f"at {now:.0f}")
    assert [record.getMessage() for record in caplog.records] == [
        "refused (Rejected #1): at 0",
        "refused 2 more (Rejected) in the last 10s, 3 in all; the latest: at 10",
        "refused 3 more (Rejected) in the last 10s, 6 in all; the latest: at 20",
    ]
