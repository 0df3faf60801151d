"""The Docker stack end to end: the image, docker-compose.yml, one container per stage.

Builds the image offline (base image from docker/build-base.sh, wheels from
docker/build-wheelhouse.sh; docker/ci-setup.sh makes both and starts the
engine), brings up coordinator + stage0..2 with the MNIST smoke job, and
checks the run's summary.  Installs nothing; without a Docker engine, Compose
or the images ci-setup.sh builds, these tests skip, saying which is missing, and
fail instead in CI (`CI` set), where a skip would hide a broken setup
(tests/conftest.py: `unavailable`).  Run with `pytest -m docker`.

Environment: DNI_DATA (datasets folder with MNIST/raw; default
../shared/datasets beside the repository), DNI_BASE_IMAGE (default
dni-base:bookworm), DNI_DOCKER_TIMEOUT (seconds for `up --build`, default 900).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("DNI_BASE_IMAGE", "dni-base:bookworm")
DATA = Path(os.environ.get("DNI_DATA", REPO.parent / "shared" / "datasets")).resolve()
UP_TIMEOUT = int(os.environ.get("DNI_DOCKER_TIMEOUT", "900"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _compose() -> list[str]:
    """`docker compose` (v2) where it works, else Debian's docker-compose (v1)."""
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    unavailable("neither `docker compose` nor `docker-compose` is installed (docker/ci-setup.sh installs one)")


def _services(config: str) -> dict[str, dict[str, str]]:
    """Each service's `image` and whether it has `build` (as "yes"), from `compose config`'s YAML."""
    services: dict[str, dict[str, str]] = {}
    section = name = None
    for line in config.splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        elif section == "services" and (match := re.fullmatch(r"  (\S+):", line)):
            name = match.group(1)
            services[name] = {}
        elif section == "services" and name and (match := re.fullmatch(r"    (build|image):(.*)", line)):
            services[name][match.group(1)] = match.group(2).strip() or "yes"
    return services


def _tail(result: subprocess.CompletedProcess, lines: int = 60) -> str:
    def last(text: str) -> str:
        return "\n".join(text.splitlines()[-lines:])
    return f"--- stdout (end) ---\n{last(result.stdout)}\n--- stderr (end) ---\n{last(result.stderr)}"


@pytest.fixture
def stack(tmp_path: Path):
    """(compose command, environment, runs folder); always torn down."""
    if not shutil.which("docker"):
        unavailable("no docker command: Docker is not installed (docker/ci-setup.sh installs and starts it)")
    info = _run(["docker", "info"])
    if info.returncode != 0:
        unavailable(f"no running Docker engine (docker/ci-setup.sh starts one): {info.stderr.strip()[-500:]}")
    if _run(["docker", "image", "inspect", BASE_IMAGE]).returncode != 0:
        unavailable(f"base image {BASE_IMAGE} is missing: run docker/build-base.sh (or docker/ci-setup.sh)")
    if not (REPO / "docker" / "wheelhouse" / "requirements.txt").is_file():
        unavailable("docker/wheelhouse is empty: run docker/build-wheelhouse.sh (or docker/ci-setup.sh)")
    if not (DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found under {DATA}; set DNI_DATA")

    project = f"dnitest{uuid.uuid4().hex[:10]}"
    runs = tmp_path / "runs"
    runs.mkdir()
    env = dict(os.environ)
    env.update({
        "COMPOSE_PROJECT_NAME": project,
        "DNI_IMAGE": f"dni:{project}",            # our own tag, removed afterwards (layers stay cached)
        "DNI_BASE_IMAGE": BASE_IMAGE,
        "DNI_OFFLINE": "1",
        "DNI_JOB": "mnist-smoke",
        "DNI_DATA": str(DATA),
        "DNI_RUNS": str(runs),
        "DNI_USER": f"{os.getuid()}:{os.getgid()}",  # results owned by whoever runs the test
        "DNI_RUN_ARGS": "--threads 1 --no-progress --no-download",
    })
    compose = _compose() + ["-f", str(REPO / "docker-compose.yml"), "-p", project]
    try:
        yield compose, env, runs
    finally:
        down = _run(compose + ["down", "-v", "--remove-orphans", "--timeout", "5"], cwd=REPO, env=env, timeout=300)
        _run(["docker", "image", "rm", "-f", env["DNI_IMAGE"]])
        left = _run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"]).stdout.split()
        assert down.returncode == 0 and not left, f"teardown left containers {left}: {down.stderr[-2000:]}"


def test_one_service_builds_the_image_the_others_run() -> None:
    """docker-compose 1.x builds once per service that has `build:` (each sending the whole context)."""
    env = dict(os.environ, DNI_IMAGE="dni:configcheck")
    config = _run(_compose() + ["-f", str(REPO / "docker-compose.yml"), "config"], cwd=REPO, env=env)
    assert config.returncode == 0, config.stderr
    services = _services(config.stdout)
    assert sorted(services) == ["coordinator", "stage0", "stage1", "stage2"], config.stdout
    assert [name for name, keys in services.items() if "build" in keys] == ["stage0"], services
    assert {keys.get("image") for keys in services.values()} == {"dni:configcheck"}, services


def test_smoke_job_trains_across_containers(stack) -> None:
    compose, env, runs = stack
    assert _run(["docker", "image", "inspect", env["DNI_IMAGE"]]).returncode != 0, "the image tag exists already"

    # The documented command, with an image that does not exist yet (as after
    # a fresh clone): stage0 builds it, the other services must find it.
    started = time.monotonic()
    up = _run(compose + ["up", "--build", "--exit-code-from", "coordinator"], cwd=REPO, env=env, timeout=UP_TIMEOUT)
    print(f"image build + stack up to coordinator exit: {time.monotonic() - started:.0f}s")
    assert up.returncode == 0, f"the coordinator exited with {up.returncode}:\n{_tail(up)}"

    summaries = list(runs.glob("*/summary.json"))
    assert len(summaries) == 1, f"expected one run folder with summary.json in {runs}: {list(runs.iterdir())}"
    summary = json.loads(summaries[0].read_text())
    assert summary["test_accuracy"] > 0.5, summary["test_accuracy"]
    # Each stage's checkpoint is written by its own container: into the run
    # folder only if the workers mount the results folder too (--resume needs it).
    checkpoints = sorted(path.name for path in (summaries[0].parent / "checkpoints").iterdir())
    assert checkpoints == ["coordinator.json", "stage0.pt", "stage1.pt", "stage2.pt"], checkpoints

    workers = summary["workers"]
    assert len(workers) == 3
    hostnames = [worker["hostname"] for worker in workers]
    assert len(set(hostnames)) == 3, f"stages did not run in separate containers: {hostnames}"
    coordinator_host = _run(["hostname"]).stdout.strip()
    assert coordinator_host not in hostnames, "a stage ran on the host, not in a container"


def test_a_graph_job_trains_across_containers(stack) -> None:
    """A job file of one's own reaches the coordinator's container through the runs folder (mounted at /runs): here
    the two-towers example, whose two stages take the data at once and whose head joins them."""
    compose, env, runs = stack
    shutil.copy(REPO / "examples" / "two_towers" / "two_towers.toml", runs / "two_towers.toml")
    env = {**env, "DNI_JOB": "/runs/two_towers.toml",
           "DNI_RUN_ARGS": f"{env['DNI_RUN_ARGS']} --iterations 200 --eval-every 100 --batch-size 64 "
                           "--train-subset 6400 --test-subset 1000"}
    up = _run(compose + ["up", "--build", "--exit-code-from", "coordinator"], cwd=REPO, env=env, timeout=UP_TIMEOUT)
    assert up.returncode == 0, f"the coordinator exited with {up.returncode}:\n{_tail(up)}"
    (summary_file,) = runs.glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["test_accuracy"] > 0.5, summary["test_accuracy"]
    assert len({worker["hostname"] for worker in summary["workers"]}) == 3
    assert [worker["takes_labels"] for worker in summary["workers"]] == [False, False, True]


def _up_until_checkpointed(compose: list[str], env: dict[str, str], runs: Path) -> None:
    up = _run(compose + ["up", "-d", "--build"], cwd=REPO, env=env, timeout=UP_TIMEOUT)
    assert up.returncode == 0, _tail(up)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoints/coordinator.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list(runs.glob("*/checkpoints/coordinator.json")), "training never reached its first checkpoint"


def _log_time(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _container(compose: list[str], env: dict[str, str], service: str) -> str:
    return _run(compose + ["ps", "-q", service], cwd=REPO, env=env).stdout.strip()


def test_a_crashed_stage_container_is_restarted_and_the_run_recovers(stack) -> None:
    """Stage 1's worker process dies (SIGKILL from the host, as a crash or the OOM killer would): compose restarts
    its container at the same service name, and the run resumes every stage from the last checkpoint and finishes."""
    compose, env, runs = stack
    env["DNI_RUN_ARGS"] += " --iterations 600 --eval-every 100 --checkpoint-every 200"
    _up_until_checkpointed(compose, env, runs)
    coordinator, stage1 = _container(compose, env, "coordinator"), _container(compose, env, "stage1")
    os.kill(int(_run(["docker", "inspect", "-f", "{{.State.Pid}}", stage1]).stdout), signal.SIGKILL)
    waited = _run(["docker", "wait", coordinator], timeout=600)
    logs = _run(["docker", "logs", coordinator]).stderr
    assert waited.stdout.strip() == "0", logs[-3000:]
    assert re.search(r"stage 1 \(tcp://stage1:5555\) lost its connection", logs), logs[-3000:]
    assert _run(["docker", "inspect", "-f", "{{.RestartCount}}", stage1]).stdout.strip() == "1"
    summary = json.loads(next(runs.glob("*/summary.json")).read_text())
    assert summary["status"] == "complete" and summary["recoveries"] == 1 and summary["resent_batches"] > 0, summary
    assert summary["steps"] == 600 and summary["test_accuracy"] > 0.5


def test_a_killed_stage_container_is_named_within_seconds(stack) -> None:
    """`docker kill` is a deliberate stop, which Docker's restart policy leaves alone: the coordinator names stage 1
    at once, waits its `rejoin_seconds` for a worker to come back, then fails the run naming the stage."""
    compose, env, runs = stack
    env["DNI_RUN_ARGS"] += " --iterations 100000 --checkpoint-every 100 --rejoin-seconds 5"
    _up_until_checkpointed(compose, env, runs)
    coordinator = _container(compose, env, "coordinator")
    killed = time.monotonic()
    assert _run(["docker", "kill", _container(compose, env, "stage1")]).returncode == 0
    waited = _run(["docker", "wait", coordinator], timeout=120)
    seconds = time.monotonic() - killed
    logs = _run(["docker", "logs", coordinator]).stderr
    print(f"stage 1 killed; the coordinator exited {seconds:.1f}s later")
    assert waited.stdout.strip() == "1", logs[-3000:]
    lost = re.search(r"^(\S+ \S+) dni.pipeline WARNING stage 1 \(tcp://stage1:5555\) lost its connection", logs, re.M)
    failed = re.search(r"^(\S+ \S+) dni ERROR run failed: stage 1 \(tcp://stage1:5555\) did not come back within 5s", logs, re.M)
    assert lost and failed, logs[-3000:]
    # lost to failed, by the coordinator's clock: 3 s of grace for a dropped connection + 5 s of rejoin_seconds +
    # cleanup, measured 8.8 s; kill to exit also holds docker's own kill and wait (measured 16-22 s on 2 busy cores)
    assert _log_time(failed[1]) - _log_time(lost[1]) < 12
    assert seconds < 60
    summary = json.loads(next(runs.glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == 1, summary
    for service in ("stage0", "stage2"):
        worker_logs = _run(compose + ["logs", "--no-color", service], cwd=REPO, env=env)
        assert "ending job" in worker_logs.stdout + worker_logs.stderr, f"{service} did not say why it stopped"


def test_the_smoke_job_runs_on_a_one_node_swarm(stack) -> None:
    """`docker stack deploy -c docker-compose.yml` on a swarm of this one node: the same file, the smoke job to its summary."""
    compose, env, runs = stack
    build = _run(compose + ["build", "stage0"], cwd=REPO, env=env, timeout=UP_TIMEOUT)
    assert build.returncode == 0, _tail(build)
    was_in_swarm = _run(["docker", "info", "-f", "{{.Swarm.LocalNodeState}}"]).stdout.strip() == "active"
    if not was_in_swarm:
        init = _run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"])
        assert init.returncode == 0, init.stderr
    name = env["COMPOSE_PROJECT_NAME"]
    try:
        deploy = _run(["docker", "stack", "deploy", "-c", str(REPO / "docker-compose.yml"), name], cwd=REPO, env=env, timeout=300)
        assert deploy.returncode == 0, _tail(deploy)
        deadline = time.monotonic() + UP_TIMEOUT
        while not list(runs.glob("*/summary.json")) and time.monotonic() < deadline:
            time.sleep(1)
        summaries = list(runs.glob("*/summary.json"))
        logs = _run(["docker", "service", "logs", f"{name}_coordinator"]).stderr
        assert summaries, f"no summary after {UP_TIMEOUT}s: {logs[-3000:]}"
        summary = json.loads(summaries[0].read_text())
        assert summary["status"] == "complete" and summary["test_accuracy"] > 0.5, summary
        assert len({worker["hostname"] for worker in summary["workers"]}) == 3
    finally:
        _run(["docker", "stack", "rm", name], timeout=120)
        deadline = time.monotonic() + 120
        while _run(["docker", "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={name}"]).stdout.strip() \
                and time.monotonic() < deadline:
            time.sleep(1)
        _run(["docker", "volume", "rm", f"{name}_dni-keys"])
        if not was_in_swarm:
            assert _run(["docker", "swarm", "leave", "--force"]).returncode == 0
            _run(["docker", "network", "rm", "docker_gwbridge"])
