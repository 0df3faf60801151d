"""Signals as launchers send them: SIGTERM or SIGINT to the whole process group (`timeout`, Slurm, a terminal's
Ctrl-C) ends a run with the same interrupt checkpoint as a Ctrl-C to the coordinator alone; a worker started by
hand stops on SIGTERM."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dni.coordinator.jobs.job import SHORTCUTS
from dni.lifetime import alive, children

pytestmark = pytest.mark.e2e

CHECKPOINT_EVERY = 100_000  # no periodic checkpoint before the signal: any checkpoint is the interrupt's


def _running_job(tmp_path: Path, data_root: Path) -> tuple[subprocess.Popen, Path]:
    """The coordinator, its stdout and stderr going to tmp_path/stdout and tmp_path/stderr; and its results folder."""
    job_file = tmp_path / "job.toml"
    job_file.write_text(SHORTCUTS["mnist-smoke"].read_text().replace("iterations = 300", "iterations = 100000")
                        .replace("eval_every = 100", "eval_every = 50"))
    results = tmp_path / "runs"
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "dni", "run", str(job_file), "--data-root", str(data_root), "--results", str(results),
             "--no-progress", "--checkpoint-every", str(CHECKPOINT_EVERY)], start_new_session=True, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 120
    while not list(results.glob("*/metrics.jsonl")) and time.monotonic() < deadline:  # training is under way
        assert coordinator.poll() is None, "the run ended before it was signalled"
        time.sleep(0.1)
    assert list(results.glob("*/metrics.jsonl")), "no evaluation within 120 s"
    return coordinator, results


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_ends_the_run_with_its_interrupt_checkpoint(signum, data_root, tmp_path):
    coordinator, results = _running_job(tmp_path, data_root)
    workers = children(coordinator.pid)
    try:
        assert len(workers) == 3
        os.killpg(coordinator.pid, signum)  # the coordinator and every worker, as `timeout` and scancel send it
        code = coordinator.wait(60)
    finally:
        if coordinator.poll() is None:
            os.killpg(coordinator.pid, signal.SIGKILL)
    run = next(results.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    step = json.loads((run / "checkpoints" / "coordinator.json").read_text())["step"]
    assert code == 130
    assert summary["status"] == "interrupted" and 50 <= step == summary["resume_from_step"], \
        "the checkpoint was written at the signal, with every worker still there"
    log = (tmp_path / "stderr").read_text()
    assert " ERROR " not in log and " dni WARNING interrupted; workers stopped" in log, log[-3000:]
    assert f"3 stages; results in {run}\n" in log and not re.search(rf"{run.name}-[0-9a-f]{{8}}", log), \
        "the log names the run by its folder alone; the job id with its suffix is the wire's"
    assert (tmp_path / "stdout").read_text().splitlines()[-1] == \
        f"stopped at step {step}; results in {run}; continue with: dni run --resume {run}"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "the coordinator stopped its workers"


def test_a_worker_started_by_hand_exits_on_sigterm(tmp_path):
    worker = subprocess.Popen([sys.executable, "-m", "dni", "worker", "--bind", f"ipc://{tmp_path}/worker",
                               "--ready-file", str(tmp_path / "ready")])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "ready").is_file()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        worker.kill()
