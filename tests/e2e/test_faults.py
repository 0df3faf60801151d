"""Faults: a killed worker is restarted from the last checkpoint and the run finishes; a stopped run
resumes; a hung worker and a dead coordinator are noticed within seconds; a slow stage holds the
others back instead of letting memory grow."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dni.coordinator.jobs.job import SHORTCUTS
from dni.coordinator.results.folder import read_metrics
from dni.protocol import free_port_block
from dni import resume_job, run_job
from dni.coordinator.results.folder import RunComplete
from dni.errors import PipelineError, RunInterrupted
from tests.conftest import LEARNED, small_job, unavailable
from dni.lifetime import alive, children
from tests.e2e.processes import at_first_checkpoint, interrupt, run_cli, when_checkpointed

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_killed_worker_is_restarted_and_the_run_finishes(transport, data_root, tmp_path, monkeypatch):
    job = small_job(data_root, tmp_path, mode="sg", iterations=300, checkpoint_every=100)

    def kill_stage1() -> None:
        victim = next(pid for pid, command in children(os.getpid()).items() if "stage1" in command)
        os.kill(victim, signal.SIGKILL)

    at_first_checkpoint(monkeypatch, kill_stage1)
    folder, summary = run_job(job, transport=transport, show_progress=False)
    assert summary["recoveries"] == 1
    assert summary["resent_batches"] > 0, "the batches after the checkpoint were sent again"
    assert summary["test_accuracy"] > LEARNED
    assert [record["step"] for record in read_metrics(folder.path)] == [100, 200, 300]
    assert not any(alive(worker["pid"]) for worker in summary["workers"])


def test_stopped_run_resumes_from_its_checkpoint(data_root, tmp_path, monkeypatch, caplog):
    job = small_job(data_root, tmp_path, mode="cdni", iterations=300, checkpoint_every=100)
    with monkeypatch.context() as patch:
        at_first_checkpoint(patch, interrupt)
        with pytest.raises(RunInterrupted) as stop:  # a KeyboardInterrupt, naming the folder and its step
            run_job(job, show_progress=False)
    run = next(tmp_path.iterdir())
    checkpointed = json.loads((run / "checkpoints" / "coordinator.json").read_text())["step"]
    assert 0 < checkpointed < 300
    assert (stop.value.folder, stop.value.resume_from, stop.value.unit) == (run, checkpointed, "step")
    stopped = json.loads((run / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["resume_from_step"] == checkpointed
    caplog.set_level(logging.INFO, logger="dni")
    folder, summary = resume_job(run, show_progress=False)
    assert f"resuming {run} from step {checkpointed} (checkpoint)" in caplog.messages
    assert folder.path == run
    assert summary["resumed_from_step"] == checkpointed
    assert [record["step"] for record in read_metrics(run)] == [100, 200, 300]
    assert summary["test_accuracy"] > LEARNED
    with pytest.raises(RunComplete, match=r"already finished \(300 steps, test accuracy .*\); nothing to resume"):
        resume_job(run, show_progress=False)


def test_a_hung_worker_is_noticed_within_seconds(data_root, tmp_path):
    from dni.coordinator.jobs.job import with_addresses

    addresses = [f"tcp://127.0.0.1:{free_port_block()}" for _ in range(3)]
    workers = [subprocess.Popen([sys.executable, "-m", "dni.workers", "--bind", a, "--once", "--log-level", "ERROR"]) for a in addresses]
    try:
        job = with_addresses(small_job(data_root, tmp_path, iterations=100_000, eval_every=50, insecure=True, rejoin_seconds=0),
                             addresses)
        stopped = []

        def stop_stage1() -> None:
            while not list(tmp_path.glob("*/metrics.jsonl")):
                time.sleep(0.05)
            os.kill(workers[1].pid, signal.SIGSTOP)
            stopped.append(time.monotonic())

        threading.Thread(target=stop_stage1, daemon=True).start()
        with pytest.raises(PipelineError, match="stage 1 .* sent nothing for"):
            run_job(job, bind="tcp://127.0.0.1:*", show_progress=False)
        assert time.monotonic() - stopped[0] < 20.0, "noticed within seconds (the timeout is 10 s)"
    finally:
        for worker in workers:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
            worker.wait()


def test_workers_exit_when_the_coordinator_dies(data_root, tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text(SHORTCUTS["mnist-smoke"].read_text().replace("iterations = 300", "iterations = 100000"))
    coordinator = subprocess.Popen([sys.executable, "-m", "dni", "run", str(job_file), "--data-root", str(data_root),
                                    "--results", str(tmp_path / "runs"), "--no-progress"])
    try:
        deadline = time.monotonic() + 60
        while len(workers := children(coordinator.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        assert len(workers) == 3
        coordinator.kill()
        coordinator.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "no orphan workers"
    finally:
        coordinator.kill()


def test_a_slow_stage_holds_the_pipeline_back_with_bounded_memory(data_root, tmp_path):
    stage = {"kind": "dni.bench.stages:balanced", "features": 64, "layers": 1, "synthesizer": {"kind": "mlp", "hidden": 16, "layers": 1}}
    stages = [dict(stage), dict(stage), {**stage, "classes": 10, "delay_ms": 15.0}]
    job = small_job(data_root, tmp_path, mode="sg", iterations=240, eval_every=40, window=2, stages=stages)
    folder, summary = run_job(job, show_progress=False)
    for record in read_metrics(folder.path):
        for worker in record["workers"]:
            assert worker["pending"] <= 2, "no stage runs further ahead than its window"
            assert worker["max_rss_mb"] < 1500, f"stage {worker['stage']} grew to {worker['max_rss_mb']:.0f} MB"
    first = summary["worker_metrics"][0]
    assert first["time"]["wait_gradient"] > 0.5 * first["wall"] * 0.5, "the fast first stage spent its time held back"


BROKEN_STAGES = '''
import math
import os

import torch
from torch import nn


class Faulty(nn.Module):
    """Linear + ReLU that misbehaves on its `at`-th training call while the file named by $BROKEN_FLAG exists."""

    def __init__(self, input_shape, features, at=40, fault="raise"):
        super().__init__()
        self.layer = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), features), nn.ReLU())
        self.calls, self.at, self.fault = 0, at, fault

    def forward(self, x):
        self.calls += self.training
        out = self.layer(x)
        if self.calls >= self.at and os.path.exists(os.environ["BROKEN_FLAG"]):
            if self.fault == "raise":
                raise RuntimeError(f"boom on training call {self.calls}")
            if self.fault == "nan":
                return out * float("nan")
            return out[:, : out.shape[1] // 2]  # "shrink": an output the next stage cannot take
        return out
'''


@pytest.fixture
def broken_stages(monkeypatch, tmp_path):
    """A plug-in module of misbehaving stages, importable here and in the workers; broken while the flag file exists."""
    (tmp_path / "broken_stages.py").write_text(BROKEN_STAGES)
    flag = tmp_path / "broken"
    flag.touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("BROKEN_FLAG", str(flag))
    return flag


def faulty_job_file(tmp_path: Path, data_root: Path, fault: str) -> Path:
    job = tmp_path / f"{fault}.toml"
    job.write_text(f'''
dataset = "mnist"
mode = "sg"
batch_size = 64
iterations = 300
eval_every = 100
checkpoint_every = 20
train_subset = 6400
test_subset = 1000
threads = 1
data_root = "{data_root}"
download = false

[optimizer]
name = "adam"
lr = 1e-3

[[stages]]
kind = "linear_bn_relu"
features = 64
synthesizer = {{ kind = "mlp", hidden = 64 }}

[[stages]]
kind = "broken_stages:Faulty"
features = 64
fault = "{fault}"
synthesizer = {{ kind = "mlp", hidden = 64 }}

[[stages]]
kind = "linear"
features = 10
''')
    return job


def test_a_raising_stage_ends_the_run_naming_it_and_resume_continues_once_fixed(broken_stages, data_root, tmp_path):
    result, workers, seconds = run_cli(str(faulty_job_file(tmp_path, data_root, "raise")), "--results", str(tmp_path / "runs"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "run failed: stage 1 (broken_stages:Faulty) failed: RuntimeError: boom on training call 40" in result.stderr
    assert "Traceback" in result.stderr, "the worker logs the traceback"
    assert seconds < 60
    assert workers and not any(alive(pid) for pid in workers), "no process left behind"
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == 1 and "boom" in summary["error"]
    assert summary["resume_from_step"] == 20, "the last periodic checkpoint before the failure"

    broken_stages.unlink()  # the stage is fixed
    result, _, _ = run_cli("--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_step"] == 20 and summary["test_accuracy"] > LEARNED


@pytest.mark.parametrize("fault, mode, names", [
    ("nan", "sg", "stage 1 (broken_stages:Faulty) failed: NonFiniteOutput: its output 'x' for batch 39 holds NaN or Inf"),
    ("shrink", "backprop", "stage 2 refused batch 39 from stage 1 and so lost it: x must be float32 (B, 64), got float32 [64, 32]"),
])
def test_a_stage_output_that_cannot_go_on_ends_the_run_naming_the_stage(fault, mode, names, broken_stages, data_root, tmp_path):
    from dni.coordinator.jobs.job import load_job

    job = load_job(str(faulty_job_file(tmp_path, data_root, fault)), {"results": str(tmp_path / "runs"), "mode": mode})
    started = time.monotonic()
    with pytest.raises(PipelineError) as failure:
        run_job(job, show_progress=False)
    assert names in str(failure.value)
    assert time.monotonic() - started < 60
    assert not any(alive(pid) for pid in children(os.getpid())), "no worker left behind"


def test_a_stage_producing_nan_is_counted_when_the_policy_says_count(broken_stages, data_root, tmp_path):
    from dni.coordinator.jobs.job import load_job

    job = load_job(str(faulty_job_file(tmp_path, data_root, "nan")), {"results": str(tmp_path / "runs"), "iterations": 60,
                                                                      "nonfinite": "count"})
    _, summary = run_job(job, show_progress=False)
    assert summary["worker_metrics"][1]["messages"]["nonfinite_sent"] > 0


def remote_workers(addresses: list[str]) -> list[subprocess.Popen]:
    """Workers started the way a user or an orchestrator starts them: `dni worker --once` at a fixed address."""
    return [subprocess.Popen([sys.executable, "-m", "dni.workers", "--bind", address, "--once", "--log-level", "ERROR"])
            for address in addresses]


@pytest.mark.parametrize("comes_back", [False, True], ids=["stays-dead", "restarted"])
def test_a_killed_remote_worker_is_named_within_seconds_and_rejoins_if_restarted(comes_back, data_root, tmp_path):
    """A worker the coordinator did not start: its dropped connection names it at once; if something restarts
    it at the same address (compose, Swarm), the run recovers from its last checkpoint and finishes."""
    from dni.coordinator.jobs.job import with_addresses

    addresses = [f"tcp://127.0.0.1:{free_port_block()}" for _ in range(3)]
    workers = remote_workers(addresses)
    try:
        job = small_job(data_root, tmp_path, iterations=300 if comes_back else 100_000, eval_every=50, checkpoint_every=100,
                        insecure=True, rejoin_seconds=60 if comes_back else 0)
        job = with_addresses(job, addresses)
        killed = []

        def kill_stage1() -> None:
            os.kill(workers[1].pid, signal.SIGKILL)
            killed.append(time.monotonic())
            if comes_back:
                workers[1].wait()
                workers.extend(remote_workers(addresses[1:2]))

        watcher = when_checkpointed(tmp_path, kill_stage1)
        if comes_back:
            folder, summary = run_job(job, bind="tcp://127.0.0.1:*", show_progress=False)
            watcher.join()
            assert summary["recoveries"] == 1 and summary["resent_batches"] > 0
            assert [record["step"] for record in read_metrics(folder.path)] == [50, 100, 150, 200, 250, 300]
            assert summary["test_accuracy"] > LEARNED
        else:
            with pytest.raises(PipelineError, match="stage 1 .* lost its connection .* has not come back"):
                run_job(job, bind="tcp://127.0.0.1:*", show_progress=False)
            assert time.monotonic() - killed[0] < 10.0, "named before any heartbeat timeout (10 s) could"
        assert [worker.wait(10) for worker in (workers[0], workers[2])] == [0, 0], "the others were told to stop"
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

# -- a long run survives any number of faults, and a write that fails says so ----------------------------------------


def smoke_job_file(tmp_path: Path, iterations: int, checkpoint_every: int) -> Path:
    job_file = tmp_path / "job.toml"
    job_file.write_text(SHORTCUTS["mnist-smoke"].read_text().replace(
        "iterations = 300", f"iterations = {iterations}\ncheckpoint_every = {checkpoint_every}"))
    return job_file


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB file system of its own (tmpfs), mounted for the test: a disk that can be filled without harm."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        unavailable("filling a disk needs a tmpfs of its own, which only root can mount (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` bytes; the filler's path."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as stream:
        stream.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_ends_the_run_naming_the_file_and_resume_continues_once_space_is_freed(small_disk, data_root, tmp_path):
    results = small_disk / "runs"
    job_file = smoke_job_file(tmp_path, iterations=3000, checkpoint_every=100)  # outlasts the filling on a fast machine
    filler: list[Path] = []
    when_checkpointed(results, lambda: filler.append(fill(small_disk, leave=12 * 1024)))
    result, workers, _ = run_cli(str(job_file), "--data-root", str(data_root), "--results", str(results))
    assert filler, "the disk was filled after the first checkpoint"
    assert result.returncode == 1, result.stderr[-3000:]
    failure = [line for line in result.stderr.splitlines() if "run failed: " in line]
    assert len(failure) == 1 and f"no space left on device writing {results}/" in failure[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not any(alive(pid) for pid in workers)
    run = next(results.iterdir())
    assert not list(run.rglob("*.partial")) and not (run / "checkpoints" / "next").exists(), "nothing half-written is left"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]
    assert summary["resume_from_step"] >= 100

    filler[0].unlink()
    result, _, _ = run_cli("--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run} from step {summary['resume_from_step']} (checkpoint)" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["test_accuracy"] > LEARNED
    assert [segment["status"] for segment in summary["segments"]] == ["failed", "complete"]


def test_a_results_folder_that_cannot_be_written_fails_with_one_line_and_no_traceback(data_root, tmp_path):
    results = tmp_path / "runs"
    results.mkdir()
    if subprocess.run(["chattr", "+i", str(results)], capture_output=True).returncode:
        unavailable("chattr +i (an immutable folder, which even root cannot write) is not supported on this file system")
    try:
        result, workers, seconds = run_cli("mnist-smoke", "--data-root", str(data_root), "--results", str(results))
    finally:
        subprocess.run(["chattr", "-i", str(results)], check=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    failure = [line for line in result.stderr.splitlines() if "run failed: " in line]
    assert len(failure) == 1 and f"operation not permitted writing {results}/mnist_smoke-sg-" in failure[0], result.stderr
    assert not workers, "refused before any worker started"


def test_a_batch_larger_than_the_training_set_exits_2_before_any_worker(data_root, tmp_path):
    result, workers, _ = run_cli("mnist-smoke", "--data-root", str(data_root), "--results", str(tmp_path),
                                 "--batch-size", "1000000000", "--train-subset", "6400")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "batch_size = 1000000000 is larger than the training set (6400 examples after train_subset)" in result.stderr
    assert not workers and not list(tmp_path.iterdir())


def test_a_killed_coordinator_leaves_nothing_the_next_run_does_not_clean_and_resume_counts_every_segment(data_root,
                                                                                                        tmp_path):
    sockets, results = tmp_path / "tmp", tmp_path / "runs"
    sockets.mkdir()
    environment = {**os.environ, "TMPDIR": str(sockets)}
    job_file = smoke_job_file(tmp_path, iterations=800, checkpoint_every=100)
    coordinator = subprocess.Popen([sys.executable, "-m", "dni", "run", str(job_file), "--data-root", str(data_root),
                                    "--results", str(results), "--no-progress"], env=environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second: list[subprocess.CompletedProcess] = []

    def resume_while_it_runs_then_kill_it() -> None:
        coordinator.send_signal(signal.SIGSTOP)  # alive, holding its run, however fast it would have finished
        second.append(subprocess.run([sys.executable, "-m", "dni", "run", "--resume", str(next(results.iterdir())),
                                      "--no-progress"], env=environment, capture_output=True, text=True))
        coordinator.kill()

    when_checkpointed(results, resume_while_it_runs_then_kill_it).join()
    coordinator.wait()
    run = next(results.iterdir())
    assert second[0].returncode == 2 and f"{run} is being run by another coordinator (pid {coordinator.pid})" in \
        second[0].stderr, second[0].stderr[-2000:]
    assert len(list(sockets.glob("dni-*"))) == 1, "the killed one's socket folder"
    assert not (run / "summary.json").exists()

    other = subprocess.run([sys.executable, "-m", "dni", "run", "mnist-smoke", "--data-root", str(data_root),
                            "--results", str(results), "--iterations", "20", "--no-progress"], env=environment,
                           capture_output=True, text=True)
    assert other.returncode == 0, other.stderr[-3000:]
    assert not list(sockets.glob("dni-*")), "the next run removed the socket folder its dead owner left"
    killed = json.loads((run / "summary.json").read_text())
    assert killed["status"] == "killed" and killed["resume_from_step"] >= 100
    assert f"--resume {run} continues from step {killed['resume_from_step']}" in other.stderr

    resumed = subprocess.run([sys.executable, "-m", "dni", "run", "--resume", str(run), "--no-progress"], env=environment,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["test_accuracy"] > LEARNED
    assert [(segment["from_step"], segment["status"]) for segment in summary["segments"]] == [
        (0, "killed"), (killed["resume_from_step"], "complete")]
    assert summary["total_wall_seconds"] > summary["wall_seconds"]
