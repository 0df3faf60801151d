"""dni/settings.py: a setting is one field whose row reads job files, flags and the wire, naming the value as its
reader shows it; the Job and the worker's settings are those rows."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

import pytest

from dni.coordinator.jobs.job import JOB_KEYS, SETTINGS, Job
from dni.errors import ConfigError
from dni.settings import check_type, setting, settings_of
from dni.spec import WORKER_SETTINGS, StageAssignment, WorkerSettings, check_at_least_one


@dataclass(frozen=True)
class Example:
    count: int = setting(3, "how many", check=check_at_least_one, flag=True)
    fast: bool = setting(True, "go fast", flag=True)
    plain: str = ""


def test_a_row_is_its_field_plus_what_the_field_cannot_say():
    count, fast = settings_of(Example)
    assert (count.name, count.kind, count.default, count.help, count.flag_name) == ("count", int, 3, "how many", "--count")
    assert fast.flag_name == "--no-fast", "a switch that is on by default is turned off"
    assert Example().count == 3 and [entry.name for entry in fields(Example)] == ["count", "fast", "plain"]


def test_a_value_is_refused_under_the_name_its_reader_shows():
    count = settings_of(Example)[0]
    assert count.read(5) == 5
    with pytest.raises(ConfigError, match="^count must be at least 1, got 0$"):
        count.read(0)
    with pytest.raises(ConfigError, match="^--count must be int, got '5'$"):
        count.read("5", "--count")
    with pytest.raises(ConfigError, match="^count must be int, got True$"):
        count.receive(True)


def test_check_type_keeps_bools_and_numbers_apart_but_takes_an_int_for_a_float():
    assert check_type("x", 5, float) == 5
    with pytest.raises(ConfigError, match="^x must be float, got True$"):
        check_type("x", True, float)


def test_every_setting_is_a_job_key_and_the_workers_are_the_jobs_and_every_assignments():
    top = {row.name for row in SETTINGS if not row.section}
    assert JOB_KEYS == top | {"stages"}
    assert {row.name for row in WORKER_SETTINGS} == {entry.name for entry in fields(WorkerSettings)}
    assert all(issubclass(cls, WorkerSettings) for cls in (Job, StageAssignment))
    assert [row.name for row in SETTINGS if row.default is MISSING] == ["name"]
    assert all(row.help for row in SETTINGS)
