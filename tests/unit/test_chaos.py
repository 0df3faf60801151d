"""dni/bench/chaos.py without processes: the fault plan a seed makes, and when the coordinator's log says it
noticed each fault."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest

from dni.bench.chaos import AFTER_REPLACEMENT, KINDS, coordinator_delays, notices, plan, unnoticed

COUNTS = {"kill": 2, "stop": 2, "kill_replacement": 1, "stop_at_checkpoint": 1}


def test_a_seed_makes_one_plan_and_replays_it():
    faults = plan(0, COUNTS, 25.0, 40.0)
    assert [fault.kind for fault in faults] == ["stop", "kill_replacement", "kill", "kill", "stop_at_checkpoint", "stop"]
    assert plan(0, COUNTS, 25.0, 40.0) == faults
    assert [fault.kind for fault in plan(1, COUNTS, 25.0, 40.0)] != [fault.kind for fault in faults]


@pytest.mark.parametrize("seed", range(20))
def test_a_plan_holds_the_faults_asked_for_at_delays_in_range(seed):
    faults = plan(seed, COUNTS, 25.0, 40.0)
    assert Counter(fault.kind for fault in faults) == COUNTS
    for fault in faults:
        assert 0 <= fault.pick < 1
        if fault.kind == "kill_replacement":
            assert fault.delay == AFTER_REPLACEMENT
        else:
            assert 25.0 <= fault.delay <= 40.0


@pytest.mark.parametrize("seed", range(20))
def test_a_replacement_is_never_killed_before_a_fault_made_one(seed):
    faults = plan(seed, {"kill_replacement": 3, "stop": 1}, 1.0, 2.0)
    assert faults[0].kind == "stop"
    assert Counter(fault.kind for fault in faults) == {"kill_replacement": 3, "stop": 1}


@pytest.mark.parametrize("counts, low, high, error", [
    ({"kill_replacement": 2}, 1.0, 2.0, "needs another fault before it"),
    ({"freeze": 1}, 1.0, 2.0, r"unknown fault kinds \['freeze'\]"),
    ({"kill": 1}, 3.0, 2.0, "from low to high"),
    ({"kill": 1}, -1.0, 2.0, "from low to high"),
])
def test_a_plan_that_cannot_be_made_is_refused(counts, low, high, error):
    with pytest.raises(ValueError, match=error):
        plan(0, counts, low, high)


def test_no_faults_make_an_empty_plan():
    assert plan(0, {}, 1.0, 2.0) == []
    assert plan(0, dict.fromkeys(KINDS, 0), 1.0, 2.0) == []


def test_coordinator_kills_come_at_seeded_times_in_range():
    delays = coordinator_delays(3, 10, 15.0, 30.0)
    assert len(delays) == 10 and all(15.0 <= delay <= 30.0 for delay in delays)
    assert coordinator_delays(3, 10, 15.0, 30.0) == delays != coordinator_delays(4, 10, 15.0, 30.0)
    with pytest.raises(ValueError, match="from low to high"):
        coordinator_delays(3, 10, 30.0, 15.0)


LOG = """\
2026-12-07 06:50:10,000 dni.run INFO 3 stages; results in runs/test-sg
2026-12-07 06:50:25,123 dni.trainer WARNING the worker of stage 2 (pid 5514) was killed by signal 9; replacing its worker and resuming every stage from step 750 (18 batches re-sent)
2026-12-07 06:50:28,700 dni.launcher WARNING restarted the worker of stage 2 as pid 5566
2026-12-07 06:50:29,655 dni.worker[5513] WARNING refused a message (Rejected #1): message for job 'a', this worker serves 'b'
{"test_accuracy": 0.85, "note": "stdout between the log lines"}
2026-12-07 06:51:02,004 dni.sequences WARNING stage 1 (ipc:///tmp/dni-1/stage1.control) sent nothing for 10s: died or unreachable; replacing its worker and resuming every stage from batch 96
2026-12-07 06:51:03,000 dni.trainer INFO not a warning: replacing its worker
"""


def at(second: int, millisecond: int, minute: int = 50) -> float:
    return datetime(2026, 12, 7, 6, minute, second, millisecond * 1000).timestamp()


def test_the_log_says_when_each_replacement_began_in_local_wall_time():
    assert notices(LOG) == [at(25, 123), at(2, 4, minute=51)]
    assert notices("") == []


def test_each_fault_is_noticed_by_the_first_notice_after_it():
    assert unnoticed([10.0, 20.0], [10.4, 30.0]) == pytest.approx([0.4, 10.0])


def test_a_notice_answers_one_fault_only_and_one_before_every_fault_answers_none():
    assert unnoticed([10.0, 11.0], [5.0, 12.0]) == [pytest.approx(2.0), None]
    assert unnoticed([10.0], []) == [None]
    assert unnoticed([], [1.0]) == []


def test_a_notice_in_the_same_millisecond_as_its_fault_counts():
    assert unnoticed([at(25, 123) + 0.0004], notices(LOG)) == [0.0]
