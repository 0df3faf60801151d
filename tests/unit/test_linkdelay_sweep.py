"""dni/bench/linkdelay*.py without workers: the sweep's order, caps, projections and verdicts."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from dni.bench.linkdelay import (LEAST_RUN_SECONDS, Runner, Sweep, parse_delays, plan, project,
                                             steps_to_accuracy)
from dni.bench.linkdelay_report import compare, format_time, verdicts
from dni.coordinator.jobs.job import job_from_table
from dni.errors import ConfigError

JOB = job_from_table({"name": "ref", "dataset": "mnist", "batch_size": 100, "iterations": 10,
                      "stages": [{"kind": "linear_bn_relu", "features": 8}, {"kind": "linear", "features": 10}]})
OTHER = replace(JOB, name="balanced")
KEY = "0.950"


def sweep(**settings) -> Sweep:
    return Sweep(**{"delays": (20.0, 0.0, 5.0), "modes": ("backprop", "sg"), "targets": (0.95,), "time_cap": 60, **settings})


def row(model="ref", mode="sg", delay=0.0, seconds=None, wall=10.0, how="measured", **extra) -> dict:
    return {"model": model, "mode": mode, "delay_ms": delay, "how": how, "steps": 100, "wall_seconds": wall,
            "batch_size": 100, "time_to_accuracy": {KEY: seconds}, **extra}


def test_the_plan_trains_each_locked_reference_first_then_projections_then_delay_by_delay():
    runs = plan([JOB, OTHER], sweep(project_seconds=4))
    assert [(r.job.name, r.mode, r.delay, r.projected, r.reference) for r in runs] == [
        ("ref", "backprop", 0.0, False, True), ("balanced", "backprop", 0.0, False, True),
        ("ref", "backprop", 5.0, True, False), ("ref", "backprop", 20.0, True, False),
        ("balanced", "backprop", 5.0, True, False), ("balanced", "backprop", 20.0, True, False),
        ("ref", "sg", 0.0, False, False), ("balanced", "sg", 0.0, False, False),
        ("ref", "sg", 5.0, False, False), ("balanced", "sg", 5.0, False, False),
        ("ref", "sg", 20.0, False, False), ("balanced", "sg", 20.0, False, False),
    ]


def test_without_projection_locked_runs_are_measured_at_every_delay_in_turn():
    runs = plan([JOB], sweep())
    assert [(r.mode, r.delay, r.projected) for r in runs] == [
        ("backprop", 0.0, False), ("sg", 0.0, False), ("backprop", 5.0, False), ("sg", 5.0, False),
        ("backprop", 20.0, False), ("sg", 20.0, False)]


def test_without_a_budget_every_run_gets_its_cap():
    runner = Runner(sweep(project_seconds=4), Path("."), pool=None)
    runs = plan([JOB], sweep(project_seconds=4))
    assert [runner.cap(run, runs) for run in runs[:3]] == [60, 4, 4]


def test_a_budget_is_shared_by_weight_after_the_fixed_costs_of_the_runs_ahead():
    settings = sweep(budget=1000.0, time_cap=500, project_seconds=4, weights={"ref": 2.0})
    runs = plan([JOB, OTHER], settings)  # 2 references, 4 projected, 6 measured: 3 of each job
    runner = Runner(settings, Path("."), pool=None)
    runner.overhead = 2.0
    runner.deadline = time.monotonic() + 1000.0
    measured = runs[6:]
    expected = (1000.0 - 2.0 * len(measured)) * 2.0 / (3 * 2.0 + 3 * 1.0)  # no projected runs left to pay for
    assert runner.cap(measured[0], measured) in (int(expected) - 1, int(expected))  # the clock moved a little meanwhile
    assert runner.cap(measured[1], measured) in (int(expected / 2) - 1, int(expected / 2))  # half the weight
    assert runner.cap(measured[-1], measured[-1:]) == 500  # the last run may take all that is left, up to the cap


def test_a_locked_reference_is_held_to_the_cap_only_after_the_fixed_costs_of_the_others():
    settings = sweep(budget=100.0, project_seconds=4)
    runs = plan([JOB], settings)  # the reference, two projected, three measured
    runner = Runner(settings, Path("."), pool=None)
    runner.overhead = 2.0
    runner.deadline = time.monotonic() + 70.0
    assert runner.cap(runs[0], runs) in (70 - 2 * 6 - 4 * 2 - 1, 70 - 2 * 6 - 4 * 2)  # all but the others' fixed costs
    runner.deadline = time.monotonic() + 1000.0
    assert runner.cap(runs[0], runs) == 60  # and never past the cap


def test_a_run_whose_share_is_too_short_is_skipped_and_a_projected_one_needs_its_whole_window():
    settings = sweep(budget=100.0, project_seconds=4)
    runs = plan([JOB], settings)
    runner = Runner(settings, Path("."), pool=None)
    runner.overhead = 2.0
    runner.deadline = time.monotonic() + 2.0 * 6 + 4 * 2 + LEAST_RUN_SECONDS - 0.5
    assert runner.cap(runs[0], runs) == 0  # what is left after the others' fixed costs falls short of LEAST_RUN_SECONDS
    runner.deadline = time.monotonic() + 6.5
    assert runner.cap(runs[1], runs[1:]) == 4  # one overhead and a 4 s window fit ...
    runner.deadline = time.monotonic() + 5.5
    assert runner.cap(runs[1], runs[1:]) == 0  # ... or the window is not run at all


def test_steps_to_accuracy_is_the_first_evaluation_at_or_above_each_target():
    evaluations = [{"step": 100, "test_accuracy": 0.90}, {"step": 200, "test_accuracy": 0.95}, {"step": 300, "test_accuracy": 0.97}]
    assert steps_to_accuracy(evaluations, [0.95, 0.97, 0.99]) == {"0.950": 200, "0.970": 300, "0.990": None}


def test_a_projected_locked_run_takes_the_references_steps_at_its_own_rate():
    reference = row(mode="backprop", delay=0.0, seconds=9.5, reference=True, steady_samples_per_second=2000.0,
                    steps_to_accuracy={KEY: 180})
    slow = row(mode="backprop", delay=20.0, how="projected", seconds=None, steady_samples_per_second=200.0,
               steps_to_accuracy={KEY: None})
    other_model = row(model="balanced", mode="backprop", delay=20.0, how="projected", steady_samples_per_second=1.0,
                      steps_to_accuracy={KEY: None})
    rows = [reference, slow, other_model]
    project(rows)
    assert slow["time_to_accuracy"] == {KEY: pytest.approx(180 * 100 / 200.0)} and slow["projected_from_delay_ms"] == 0.0
    assert reference["projection_check"] == {KEY: pytest.approx(180 * 100 / 2000.0)}
    assert reference["time_to_accuracy"] == {KEY: 9.5}  # what it measured stays
    assert other_model["time_to_accuracy"] == {KEY: None}  # no reference of its own model
    assert format_time(slow, KEY) == "90.0 s projected"


@pytest.mark.parametrize("mine, wall, theirs, how, locked_wall, outcome", [
    (10.0, 12.0, 18.0, "measured", 20.0, "sooner"),
    (19.0, 20.0, 18.0, "measured", 20.0, "later"),
    (30.0, 32.0, 90.0, "projected", 4.0, "sooner"),
    (None, 30.0, 18.0, "measured", 20.0, "later"),  # not reached in 30 s; locked needed 18 s
    (None, 30.0, 90.0, "projected", 4.0, "undetermined"),  # capped before locked's projected time
    (10.0, 12.0, None, "measured", 25.0, "sooner"),  # locked did not reach it in 25 s
    (30.0, 32.0, None, "measured", 25.0, "undetermined"),
    (10.0, 12.0, None, "projected", 4.0, "undetermined"),  # no projection to compare with
])
def test_compare_says_sooner_or_later_only_when_the_runs_tell(mine, wall, theirs, how, locked_wall, outcome):
    unlocked = row(seconds=mine, wall=wall)
    locked = row(mode="backprop", seconds=theirs, wall=locked_wall, how=how)
    assert compare(unlocked, locked, KEY)["outcome"] == outcome


def test_the_verdict_names_the_first_delay_at_which_a_mode_was_sooner_and_says_never_only_when_it_was_later_throughout():
    rows = [row(mode="backprop", delay=0.0, seconds=18.0, wall=18.0), row(mode="sg", delay=0.0, seconds=19.0, wall=19.0),
            row(mode="backprop", delay=5.0, seconds=55.0, how="projected"), row(mode="sg", delay=5.0, seconds=20.0),
            row(mode="cdni", delay=0.0, seconds=None, wall=30.0), row(mode="cdni", delay=5.0, seconds=None, wall=60.0),
            {"model": "ref", "mode": "sg", "delay_ms": 20.0, "skipped": "out of budget"}]
    (sg, cdni) = verdicts(rows, 0.95)
    assert [o["outcome"] for o in sg["outcomes"]] == ["later", "sooner"] and sg["first_sooner_ms"] == 5.0
    assert not sg["never_sooner"]
    assert cdni["first_sooner_ms"] is None and cdni["never_sooner"]
    assert [o["delay_ms"] for o in cdni["outcomes"]] == [0.0, 5.0]


@pytest.mark.parametrize("text, delays", [("0,1,5,20,50", (0.0, 1.0, 5.0, 20.0, 50.0)), ("2.5", (2.5,))])
def test_parse_delays_reads_milliseconds(text, delays):
    assert parse_delays(text) == delays


@pytest.mark.parametrize("text, complaint", [
    ("0,-5", "link_delay_ms must be a finite number of milliseconds, 0 or more, got -5.0"),
    ("0,fast", "could not convert"), ("0,nan", "got nan"), ("5,5", "lists a delay twice"),
])
def test_parse_delays_refuses_what_is_no_delay_before_anything_runs(text, complaint):
    with pytest.raises(ConfigError, match=complaint) as refused:
        parse_delays(text)
    assert refused.value.exit_code == 2


def test_a_sweep_refuses_a_cap_under_a_second():
    with pytest.raises(ConfigError, match="--time-cap of 1 s or more"):
        sweep(time_cap=0)
