"""`torchrun ... -m dni.launch JOB`: one stage per rank, rank 0 also coordinating; the ranks find each
other through torchrun's rendezvous, on one host or several (here: network namespaces made by the
test), and a group that torchrun restarts resumes from its last checkpoint.

Every test runs torchrun as a user does (`python -m torch.distributed.run`, the module behind the
`torchrun` command, so that this interpreter's environment is the one used) on the smoke job
(coordinator/jobs/mnist_smoke.toml), and checks that no process is left when it is over. The parts without
torchrun are unit tests: tests/unit/test_rendezvous.py, test_elastic.py, test_checkpoints.py, test_devices.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

from dni.coordinator.results.folder import read_metrics
from dni.lifetime import alive, descendants
from dni.protocol import free_port_block
from tests.conftest import LEARNED, REPO, unavailable
from tests.e2e.processes import when_checkpointed

pytestmark = pytest.mark.e2e

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
JOB = ["-m", "dni.launch", "mnist-smoke", "--no-progress", "--checkpoint-every", "100"]
RUN_SECONDS = 240  # a run takes 30-50 s on two shared cores, most of it starting Python and torch in four processes


# -- running torchrun and watching its processes ---------------------------------------------

def environment_of(pid: int) -> dict[str, str]:
    try:
        return dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    except OSError:
        return {}


def rank_pid(roots: set[int], rank: int) -> Optional[int]:
    """The process of rank `rank` (not the coordinator, which rank 0 starts with the same environment)."""
    for pid in descendants(roots):
        command = Path(f"/proc/{pid}/cmdline").read_bytes() if alive(pid) else b""
        if b"dni.launch" in command and environment_of(pid).get("RANK") == str(rank):
            return pid
    return None


class Group:
    """torchrun agents started as a user starts them (one per "node"), their processes watched meanwhile."""

    def __init__(self, commands: list[list[str]], logs: Path, env: Optional[dict[str, str]] = None) -> None:
        self.started = time.monotonic()
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [logs / f"node{index}.log" for index in range(len(commands))]
        environment = {**os.environ, **(env or {})}
        self.agents = [subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=environment, cwd=REPO)
                       for command, log in zip(commands, self.logs)]
        self.seen: set[int] = set()
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def running(self) -> bool:
        return any(agent.poll() is None for agent in self.agents)

    @property
    def roots(self) -> set[int]:
        return {agent.pid for agent in self.agents}

    def _watch(self) -> None:
        while self._watching:
            self.seen |= descendants(self.roots)
            time.sleep(0.1)

    def wait(self, timeout: float = RUN_SECONDS) -> list[int]:
        try:
            codes = [agent.wait(max(1.0, timeout - (time.monotonic() - self.started))) for agent in self.agents]
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"torchrun did not finish within {timeout:.0f}s:\n{self.output()[-5000:]}")
        self.seconds = time.monotonic() - self.started
        self._watching = False
        self._watcher.join()
        return codes

    def kill(self) -> None:
        for pid in descendants(self.roots) | self.roots:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for agent in self.agents:
            agent.wait()

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in self.logs)

    def left_behind(self) -> list[int]:
        time.sleep(0.5)  # the agents have exited; give the kernel a moment to reap what they killed
        return sorted(pid for pid in self.seen if alive(pid))


def standalone(results: Path, *torchrun_flags: str, ranks: int = 3, job_flags: tuple[str, ...] = ()) -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node", str(ranks), *torchrun_flags, *JOB, "--results", str(results), *job_flags]


def the_run(results: Path) -> Path:
    runs = [path for path in results.iterdir() if path.is_dir()]
    assert len(runs) == 1, f"exactly one run folder, written by rank 0's coordinator: {runs}"
    return runs[0]


@pytest.fixture(autouse=True)
def _data(data_root, monkeypatch):
    monkeypatch.setenv("DNI_DATA_ROOT", str(data_root))


@pytest.fixture(scope="module")
def unkilled(data_root, tmp_path_factory) -> tuple[Group, Path]:
    """One node, three ranks: the smoke job as `torchrun --standalone` runs it, undisturbed."""
    results = tmp_path_factory.mktemp("unkilled")
    group = Group([standalone(results / "runs")], results / "logs", env={"DNI_DATA_ROOT": str(data_root)})
    codes = group.wait()
    assert codes == [0], group.output()[-5000:]
    return group, results / "runs"


# -- the tests of the issue --------------------------------------------------------------------

def test_one_node_three_ranks_learns_and_only_rank_0_writes_results(unkilled):
    group, results = unkilled
    run = the_run(results)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 300
    assert summary["test_accuracy"] > LEARNED
    assert summary["restarts"] == 0 and summary["attempts"] == 1 and summary["nodes"] == 1 and summary["world_size"] == 3
    assert summary["run_id"] in run.name, "the run folder is named from torchrun's rendezvous id"
    assert [worker["address"].startswith("tcp://127.0.0.1:") for worker in summary["workers"]] == [True] * 3, \
        "one node: every worker on loopback, so no keys are needed"
    pids = {worker["pid"] for worker in summary["workers"]}
    assert len(pids) == 3, "a worker process per stage"
    assert not group.left_behind(), f"processes left: {group.left_behind()}"
    print(f"standalone run: {group.seconds:.1f}s, test accuracy {summary['test_accuracy']:.3f}")


@pytest.fixture
def network(tmp_path):
    """Three "hosts": network namespaces joined by a bridge (in a fourth namespace), each with its own address and,
    through /etc/netns/NAME/hosts (which `ip netns exec` mounts over /etc/hosts), the names of all three."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        unavailable("network namespaces need root and the ip and unshare commands")
    prefix = f"dnit{uuid.uuid4().hex[:6]}"
    switch, nodes = f"{prefix}-sw", [f"{prefix}-n{index}" for index in range(3)]
    addresses = [f"10.231.7.{index + 1}" for index in range(3)]
    hosts = "127.0.0.1 localhost\n" + "".join(f"{address} node{index}\n" for index, address in enumerate(addresses))
    steps = [["ip", "netns", "add", switch], ["ip", "-n", switch, "link", "add", "br0", "type", "bridge"],
             ["ip", "-n", switch, "link", "set", "br0", "up"]]
    for index, (node, address) in enumerate(zip(nodes, addresses)):
        steps += [["ip", "netns", "add", node],
                  ["ip", "link", "add", "eth0", "netns", node, "type", "veth", "peer", "name", f"p{index}", "netns", switch],
                  ["ip", "-n", switch, "link", "set", f"p{index}", "master", "br0"],
                  ["ip", "-n", switch, "link", "set", f"p{index}", "up"],
                  ["ip", "-n", node, "addr", "add", f"{address}/24", "dev", "eth0"],
                  ["ip", "-n", node, "link", "set", "eth0", "up"], ["ip", "-n", node, "link", "set", "lo", "up"]]
    made: list[str] = []
    try:
        for step in steps:
            if step[1:3] == ["netns", "add"]:
                made.append(step[3])
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                unavailable(f"cannot make network namespaces here: {' '.join(step)}: {done.stderr.strip()}")
        for node in nodes:
            Path(f"/etc/netns/{node}").mkdir(parents=True, exist_ok=True)
            Path(f"/etc/netns/{node}/hosts").write_text(hosts)
        yield nodes
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


@pytest.mark.parametrize("where", ["loopback", "namespaces"])
def test_three_nodes_meet_through_the_rendezvous(where, tmp_path, request):
    """Three torchrun agents, one rank each, the same command everywhere: the workers bind ports of their own and
    find each other through the c10d rendezvous. In namespaces the traffic crosses veth links and a bridge, so
    the addresses reach beyond loopback and CURVE keys are required (given here)."""
    results = tmp_path / "runs"
    run_id = f"t{uuid.uuid4().hex[:8]}"
    if where == "loopback":
        endpoint, prefixes, extra = f"127.0.0.1:{free_port_block(1)}", [[]] * 3, ["--local-addr", "127.0.0.1"]
    else:
        nodes = request.getfixturevalue("network")
        endpoint, extra = "node0:29400", ["--keys", str(tmp_path / "keys")]
        subprocess.run([sys.executable, "-m", "dni", "keys", str(tmp_path / "keys")], check=True, capture_output=True)
        prefixes = [["ip", "netns", "exec", node, "unshare", "--uts", "sh", "-c", f'hostname node{index} && exec "$0" "$@"']
                    for index, node in enumerate(nodes)]
    command = [*TORCHRUN, "--nnodes", "3", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", run_id, *(extra if where == "loopback" else []), *JOB, "--results", str(results),
               *(extra if where == "namespaces" else [])]
    group = Group([prefix + command for prefix in prefixes], tmp_path / "logs")
    codes = group.wait()
    assert codes == [0, 0, 0], group.output()[-6000:]
    run = the_run(results)
    assert run.name.endswith(run_id)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["test_accuracy"] > LEARNED
    assert summary["nodes"] == 3 and summary["world_size"] == 3
    hosts = [worker["address"].split("//")[1].rsplit(":", 1)[0] for worker in summary["workers"]]
    if where == "namespaces":
        assert hosts == ["10.231.7.1", "10.231.7.2", "10.231.7.3"], "each stage on its own host's address"
        assert [worker["hostname"] for worker in summary["workers"]] == ["node0", "node1", "node2"]
    else:
        assert hosts == ["127.0.0.1"] * 3
    assert not group.left_behind()
    print(f"three nodes ({where}): {group.seconds:.1f}s, test accuracy {summary['test_accuracy']:.3f}")


# Killed and unkilled runs of this job, measured with `benchmarks/elastic/run.py --pairs 5` on two shared cores
# (load ~12): killed - unkilled = +4.2, -1.9, -1.0, +1.4, -2.1 points (mean +0.1, largest |d| 4.2; the unkilled
# runs alone spread over 79.4-83.3%), restart-to-resume 11.9-19.1 s. The bar is about twice the largest
# difference measured: sg's accuracy after 300 steps depends on timing (how far stage 0 runs ahead of its
# true gradients), killed or not.
ACCURACY_BAR = 0.08


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_resumes(unkilled, tmp_path):
    _, unkilled_results = unkilled
    reference = json.loads((the_run(unkilled_results) / "summary.json").read_text())
    results = tmp_path / "runs"
    group = Group([standalone(results, "--max-restarts", "1")], tmp_path / "logs")
    killed: list[float] = []

    def kill_rank_1() -> None:
        victim = rank_pid(group.roots, 1)
        os.kill(victim, signal.SIGKILL)
        killed.append(time.time())

    watcher = when_checkpointed(results, kill_rank_1, running=group.running, timeout=RUN_SECONDS)
    codes = group.wait()
    watcher.join()
    assert killed, "rank 1 was killed"
    assert codes == [0], group.output()[-6000:]
    run = the_run(results)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 300
    assert summary["resumed_from_step"] == 100, "from the checkpoint before the kill"
    assert summary["restarts"] == 1 and summary["attempts"] == 2
    assert [record["step"] for record in read_metrics(run)] == [100, 200, 300], "the lost attempt's lines rolled back"
    difference = summary["test_accuracy"] - reference["test_accuracy"]
    assert abs(difference) < ACCURACY_BAR, (summary["test_accuracy"], reference["test_accuracy"])
    assert not group.left_behind()
    print(f"killed and resumed: {group.seconds:.1f}s, accuracy {summary['test_accuracy']:.3f} vs {reference['test_accuracy']:.3f} "
          f"unkilled, first result {summary['first_result_at'] - killed[0]:.1f}s after the kill")


def test_world_size_that_does_not_match_the_stages_exits_2_naming_both(tmp_path):
    group = Group([standalone(tmp_path / "runs", ranks=2)], tmp_path / "logs")
    codes = group.wait()
    output = group.output()
    message = "torchrun started 2 ranks (nodes x --nproc-per-node) but job 'mnist_smoke' has 3 stages"
    assert codes != [0] and message in output
    assert "exitcode  : 2" in output, "each rank exits 2; torchrun's report shows it (torchrun itself exits 1)"
    assert not (tmp_path / "runs").exists(), "nothing trained, no run folder"
    assert not group.left_behind()
    # a rank on its own says the same with exit code 2 (what torchrun reports above)
    rank = subprocess.run([sys.executable, "-m", "dni.launch", "mnist-smoke"], capture_output=True, text=True, cwd=REPO, env={
        **os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
        "TORCHELASTIC_RUN_ID": "x"}, timeout=120)
    assert rank.returncode == 2 and "torchrun started 4 ranks" in rank.stderr and "has 3 stages" in rank.stderr


# -- more of the same feature --------------------------------------------------------------------

def test_a_killed_rank_without_restarts_left_fails_naming_it(tmp_path):
    results = tmp_path / "runs"
    group = Group([standalone(results, job_flags=("--iterations", "100000"))], tmp_path / "logs")
    victims: list[int] = []

    def kill_rank_1() -> None:
        victims.append(rank_pid(group.roots, 1))
        os.kill(victims[0], signal.SIGKILL)

    watcher = when_checkpointed(results, kill_rank_1, running=group.running, timeout=RUN_SECONDS)
    codes = group.wait()
    watcher.join()
    output = group.output()
    assert victims, output[-4000:]
    assert codes != [0]
    assert f"rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: {victims[0]})" in output, output[-4000:]
    assert "no checkpoint written" in output and "stage 1" in output and "lost its connection" in output
    summary = json.loads((the_run(results) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume_from_step"] == 100
    assert not group.left_behind()


def test_sigterm_to_torchrun_checkpoints_and_stops_everything(tmp_path):
    results = tmp_path / "runs"
    group = Group([standalone(results, job_flags=("--iterations", "100000"))], tmp_path / "logs")
    signalled: list[float] = []

    def terminate() -> None:
        time.sleep(0.5)
        os.kill(group.agents[0].pid, signal.SIGTERM)
        signalled.append(time.monotonic())

    watcher = when_checkpointed(results, terminate, running=group.running, timeout=RUN_SECONDS)
    codes = group.wait()
    watcher.join()
    assert signalled, group.output()[-4000:]
    assert codes != [0]
    assert time.monotonic() - signalled[0] < 30, "before torchrun's own SIGKILL"
    summary = json.loads((the_run(results) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume_from_step"] > 100, "a last checkpoint on the way out"
    assert not group.left_behind()


def test_a_frozen_rank_is_lost_the_group_restarted_and_the_run_resumes(tmp_path):
    """SIGSTOP, never continued: torchrun sees no death, so the coordinator must. It gives up on the silent rank
    after the heartbeat timeout and --rejoin-seconds, the failure restarts the group (torchrun kills the frozen
    rank with it), and the new group resumes from the last checkpoint."""
    results = tmp_path / "runs"
    group = Group([standalone(results, "--max-restarts", "1", job_flags=("--rejoin-seconds", "2"))], tmp_path / "logs")
    frozen: list[int] = []

    def freeze_rank_1() -> None:
        frozen.append(rank_pid(group.roots, 1))
        os.kill(frozen[0], signal.SIGSTOP)

    watcher = when_checkpointed(results, freeze_rank_1, running=group.running, timeout=RUN_SECONDS)
    codes = group.wait()
    watcher.join()
    output = group.output()
    assert frozen, output[-4000:]
    assert codes == [0], output[-6000:]
    assert "stage 1" in output and "sent nothing for" in output and "did not come back within 2s" in output
    summary = json.loads((the_run(results) / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_step"] >= 100 and summary["attempts"] == 2
    assert [segment["status"] for segment in summary["segments"]] == ["failed", "complete"]
    assert not alive(frozen[0]) and not group.left_behind()


def test_a_graph_job_runs_one_stage_per_rank(data_root, tmp_path):
    """The two-towers example (two stages that take the data, a head that joins them) as torchrun runs it."""
    towers = Path(__file__).resolve().parents[2] / "examples" / "two_towers" / "two_towers.toml"
    group = Group([[*TORCHRUN, "--standalone", "--nproc-per-node", "3", "-m", "dni.launch", str(towers), "--no-progress",
                    "--iterations", "100", "--eval-every", "100", "--batch-size", "64", "--train-subset", "6400",
                    "--test-subset", "1000", "--threads", "1", "--results", str(tmp_path / "runs")]],
                  tmp_path / "logs", env={"DNI_DATA_ROOT": str(data_root)})
    assert group.wait() == [0], group.output()[-5000:]
    summary = json.loads((the_run(tmp_path / "runs") / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 100 and summary["test_accuracy"] > 0.5
    assert [worker["takes_labels"] for worker in summary["workers"]] == [False, False, True]
    assert not group.left_behind()
