"""The `link_delay_ms` and `stop_at_accuracy` job settings: checked where a job is read, carried to every worker."""
from __future__ import annotations

import math

import pytest

from dni.cli import build_parser
from dni.coordinator.jobs.job import job_as_table, job_from_table
from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec
from dni.testing import chain_edges

TABLE = {"name": "unit", "dataset": "mnist", "stages": [{"kind": "linear_bn_relu", "features": 8}, {"kind": "linear", "features": 10}]}


def test_no_delay_and_no_early_stop_unless_asked():
    job = job_from_table(TABLE)
    assert job.link_delay_ms == 0.0 and job.stop_at_accuracy == 0.0


@pytest.mark.parametrize("value", [0, 5, 2.5, 50.0])
def test_a_delay_is_any_finite_number_of_milliseconds_from_zero_and_survives_the_run_folder(value):
    job = job_from_table({**TABLE, "link_delay_ms": value})
    assert job.link_delay_ms == value
    assert job_from_table(job_as_table(job)).link_delay_ms == value  # job.json, read back by --resume


@pytest.mark.parametrize("value, complaint", [
    (-1, "link_delay_ms must be a finite number of milliseconds, 0 or more, got -1"),
    (math.inf, "got inf"), (math.nan, "got nan"),
    ("5", "link_delay_ms must be float, got '5'"), (True, "link_delay_ms must be float, got True"),
    (5000.5, "link_delay_ms must be at most 5000 \\(an emulated hop, not a pause\\), got 5000.5"),
])
def test_a_bad_delay_is_refused_naming_the_setting(value, complaint):
    with pytest.raises(ConfigError, match=complaint) as refused:
        job_from_table({**TABLE, "link_delay_ms": value}, "job.toml")
    assert str(refused.value).startswith("job.toml: ") and refused.value.exit_code == 2


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_stop_at_accuracy_is_a_fraction(value):
    with pytest.raises(ConfigError, match="stop_at_accuracy must be a fraction from 0 to 1"):
        job_from_table({**TABLE, "stop_at_accuracy": value})


def test_dni_run_takes_both_as_flags():
    args = build_parser().parse_args(["run", "mnist", "--link-delay-ms", "20", "--stop-at-accuracy", "0.95"])
    assert args.link_delay_ms == 20.0 and args.stop_at_accuracy == 0.95


def assignment(**settings) -> StageAssignment:
    return StageAssignment(job="unit", index=0, num_stages=2, spec=StageSpec("linear", {"features": 2}), mode=Mode.SG,
                           input_shape=(3,), num_classes=2, optimizer=OptimizerSpec("sgd", 0.1), seed=0, window=2,
                           threads=1, coordinator="inproc://c", **chain_edges(0, (3,), None, "inproc://d"), **settings)


def test_every_worker_is_told_the_delay_and_a_coordinator_that_says_nothing_means_none():
    wire = assignment(link_delay_ms=20.0).to_wire()
    assert wire["link_delay_ms"] == 20.0 and StageAssignment.from_wire(wire).link_delay_ms == 20.0
    del wire["link_delay_ms"]  # an older coordinator
    assert StageAssignment.from_wire(wire).link_delay_ms == 0.0


@pytest.mark.parametrize("value", [-5, "20", None, math.inf])
def test_a_worker_refuses_a_bad_delay_on_the_wire(value):
    wire = assignment().to_wire()
    with pytest.raises(ConfigError, match="link_delay_ms must be a finite number of milliseconds"):
        StageAssignment.from_wire({**wire, "link_delay_ms": value})
