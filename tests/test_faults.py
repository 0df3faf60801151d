"""Faults: a killed worker is restarted from the last checkpoint and the run finishes; a stopped run
resumes; a hung worker and a dead coordinator are noticed within seconds; a slow stage holds the
others back instead of letting memory grow."""
from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.pipeline import PipelineError
from coordinator.results import read_metrics
from coordinator.run import resume_job, run_job
from tests.conftest import LEARNED, small_job


def children(pid: int) -> dict[int, str]:
    """Processes whose parent is `pid`, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except FileNotFoundError:
        return False


def when_checkpointed(results: Path, action) -> threading.Thread:
    """Run `action` once the first periodic checkpoint of the run under `results` exists."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if list(results.glob("*/checkpoints/coordinator.json")):
                action()
                return
            time.sleep(0.05)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_worker_is_restarted_and_the_run_finishes(data_root, tmp_path):
    job = small_job(data_root, tmp_path, mode="sg", iterations=300, checkpoint_every=100)

    def kill_stage1() -> None:
        victim = next(pid for pid, command in children(os.getpid()).items() if "stage1" in command)
        os.kill(victim, signal.SIGKILL)

    watcher = when_checkpointed(tmp_path, kill_stage1)
    folder, summary = run_job(job, show_progress=False)
    watcher.join()
    assert summary["recoveries"] == 1
    assert summary["resent_batches"] > 0, "the batches after the checkpoint were sent again"
    assert summary["test_accuracy"] > LEARNED
    assert [record["step"] for record in read_metrics(folder.path)] == [100, 200, 300]
    assert not any(alive(worker["pid"]) for worker in summary["workers"])


def test_stopped_run_resumes_from_its_checkpoint(data_root, tmp_path):
    job = small_job(data_root, tmp_path, mode="cdni", iterations=300, checkpoint_every=100)
    watcher = when_checkpointed(tmp_path, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, show_progress=False)
    watcher.join()
    run = next(tmp_path.iterdir())
    checkpointed = json.loads((run / "checkpoints" / "coordinator.json").read_text())["step"]
    assert 0 < checkpointed < 300
    folder, summary = resume_job(run, show_progress=False)
    assert folder.path == run
    assert summary["resumed_from_step"] == checkpointed
    assert [record["step"] for record in read_metrics(run)] == [100, 200, 300]
    assert summary["test_accuracy"] > LEARNED


def test_a_hung_worker_is_noticed_within_seconds(data_root, tmp_path):
    from coordinator.launcher import free_port_block
    from coordinator.job import with_addresses

    addresses = [f"tcp://127.0.0.1:{free_port_block()}" for _ in range(3)]
    workers = [subprocess.Popen([sys.executable, "-m", "workers", "--bind", a, "--once", "--log-level", "ERROR"]) for a in addresses]
    try:
        job = with_addresses(small_job(data_root, tmp_path, iterations=100_000, eval_every=50, insecure=True), addresses)
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
    job_file.write_text((Path(__file__).parent.parent / "jobs" / "mnist_smoke.toml").read_text().replace("iterations = 300", "iterations = 100000"))
    coordinator = subprocess.Popen([sys.executable, "-m", "coordinator", "run", str(job_file), "--data-root", str(data_root),
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
    stage = {"kind": "balanced", "features": 64, "layers": 1, "synthesizer": {"kind": "mlp", "hidden": 16, "layers": 1}}
    stages = [dict(stage), dict(stage), {**stage, "classes": 10, "delay_ms": 15.0}]
    job = small_job(data_root, tmp_path, mode="sg", iterations=240, eval_every=40, window=2, stages=stages)
    folder, summary = run_job(job, show_progress=False)
    for record in read_metrics(folder.path):
        for worker in record["workers"]:
            assert worker["pending"] <= 2, "no stage runs further ahead than its window"
            assert worker["max_rss_mb"] < 1500, f"stage {worker['stage']} grew to {worker['max_rss_mb']:.0f} MB"
    first = summary["worker_metrics"][0]
    assert first["time"]["wait_gradient"] > 0.5 * first["wall"] * 0.5, "the fast first stage spent its time held back"
