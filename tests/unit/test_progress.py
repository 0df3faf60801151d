"""coordinator/train/progress.py: the progress line: its rate and time left count only the steps this process has done,
its elapsed time the whole run's; it is redrawn in place on a terminal and written a line per tenth of the run
elsewhere; a log record written while it is on a terminal starts a line of its own."""
from __future__ import annotations

import io
import logging
import types

import pytest

import dni.coordinator.train.progress as progress_module
from dni.coordinator.train.progress import EndBarLine, Progress


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(Progress, "open_line", None)  # no bar of another test is on "the terminal"
    return now


def terminal() -> io.StringIO:
    stream = io.StringIO()
    stream.isatty = lambda: True
    return stream


def test_resumed_run_counts_only_the_steps_since_it_resumed(clock):
    stream = io.StringIO()
    progress = Progress(25_000, "mnist_fcn/sg", True, stream, start=20_000)
    clock[0] += 10.0
    progress.update(21_000, 21_000 * 256, 0.97)  # 1,000 steps of 256 in 10 s; 4,000 to go
    assert stream.getvalue() == ("mnist_fcn/sg [####################....] 21000/25000 steps  test 97.00%    "
                                 "25600 samples/s     10s elapsed,    40s left\n")


def test_a_resumed_runs_elapsed_time_counts_its_earlier_segments_but_its_rate_only_this_one(clock):
    stream = io.StringIO()
    progress = Progress(25_000, "mnist_fcn/sg", True, stream, start=20_000, earlier_seconds=90.0)
    clock[0] += 10.0
    progress.update(21_000, 21_000 * 256, 0.97)
    assert stream.getvalue() == ("mnist_fcn/sg [####################....] 21000/25000 steps  test 97.00%    "
                                 "25600 samples/s    100s elapsed,    40s left\n")


def test_a_log_record_on_the_terminal_starts_a_line_of_its_own_and_the_bar_goes_on_below_it(clock):
    stream = terminal()
    handler = logging.StreamHandler(stream)
    handler.addFilter(EndBarLine())
    logger = logging.getLogger("dni.test_progress")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        progress = Progress(100, "job/sg", True, stream)
        clock[0] += 1.0
        progress.update(50, 500, None)
        logger.warning("interrupted: writing a checkpoint at step 50 first")
        logger.warning("the line is ended once, not before every record")
        clock[0] += 1.0
        progress.update(60, 600, None)
        progress.close()
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().split("\n")
    assert [line.split(" [")[0] for line in lines] == [
        "\rjob/sg", "interrupted: writing a checkpoint at step 50 first", "the line is ended once, not before every record",
        "\rjob/sg", ""]


def test_closing_a_bar_whose_line_was_ended_writes_no_blank_line(clock):
    stream = terminal()
    progress = Progress(100, "job/sg", True, stream)
    clock[0] += 1.0
    progress.update(50, 500, None)
    Progress.end_open_line()  # as the command line does before its last word
    progress.close()
    assert stream.getvalue().count("\n") == 1 and stream.getvalue().endswith("\n")


def test_a_sequence_job_shows_its_own_figure_in_place_of_the_test_accuracy(clock):
    stream = io.StringIO()
    progress = Progress(100, "copy/sg", True, stream)
    clock[0] += 10.0
    progress.update(100, 3200, None, "length   4")
    assert stream.getvalue() == ("copy/sg [########################] 100/100 steps  length   4      "
                                 "320 samples/s     10s elapsed,     0s left\n")


def test_fresh_run_and_the_positional_call_the_trainer_makes(clock):
    stream = io.StringIO()
    progress = Progress(25_000, "mnist_fcn/sg", True, stream)
    clock[0] += 10.0
    progress.update(2_500, 2_500 * 256, None)
    assert stream.getvalue() == ("mnist_fcn/sg [##......................] 2500/25000 steps  test   --      "
                                 "64000 samples/s     10s elapsed,    90s left\n")


def test_resumed_run_before_its_first_new_step_shows_no_rate(clock):
    stream = io.StringIO()
    progress = Progress(100, "job/sg", True, stream, start=100)
    clock[0] += 1.0
    progress.update(100, 100 * 64, 0.5)
    assert "      0 samples/s      1s elapsed,     0s left" in stream.getvalue()


def test_a_log_file_gets_a_line_at_every_tenth_of_the_run_and_at_the_end(clock):
    stream = io.StringIO()
    progress = Progress(100, "job/sg", True, stream)
    for done in range(1, 101):
        clock[0] += 0.01
        progress.update(done, done * 10, None)
    steps = [line.split("] ")[1].split(" steps")[0] for line in stream.getvalue().splitlines()]
    assert steps == [f"{tenth * 10}/100" for tenth in range(1, 11)]


def test_a_terminal_is_redrawn_in_place_at_most_four_times_a_second(clock):
    stream = terminal()
    progress = Progress(1000, "job/sg", True, stream)
    for done in range(1, 11):
        clock[0] += 0.125
        progress.update(done, done, None)
    progress.close()
    assert stream.getvalue().count("\r") == 5  # at 0.125, 0.375, 0.625, 0.875 and 1.125 s of the 1.25
    assert stream.getvalue().endswith("\n") and "\n" not in stream.getvalue()[:-1]


def test_a_disabled_progress_writes_nothing(clock):
    stream = io.StringIO()
    progress = Progress(10, "job/sg", False, stream)
    clock[0] += 1.0
    progress.update(10, 100, 0.5)
    progress.close()
    assert stream.getvalue() == ""
