"""CURVE on every tcp:// socket: rogue peers get nothing through to a live worker, a keyed run over
tcp learns, and binding beyond loopback without keys fails before anything starts."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import zmq

from tests.conftest import LEARNED, small_job
from dni.coordinator.jobs.job import with_addresses
from dni.coordinator.pools.pipeline import Pipeline
from dni.coordinator.pools.pool import RemoteWorkers
from dni import run_job
from dni.protocol import free_port_block
from dni.protocol import Kind, Message, ProtocolError, encode, receive_message, worker_endpoints
from dni.protocol.security import create_keys, load_keys, make_server, secure_context
from tests.e2e.live_worker import JOB, request, stage_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def keys(tmp_path):
    return load_keys(create_keys(tmp_path / "keys"))


def start_worker(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dni.workers", *arguments, "--log-level", "ERROR"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def batch(step: int, job: str = JOB, kind: Kind = Kind.FORWARD) -> list:
    rng = np.random.default_rng(step)
    x = rng.random((16, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 16).astype(np.int64)
    return encode(Message(kind, job, step, step, -1, {}, {"x": x, "labels": labels}))


def drain(inbox: zmq.Socket, seconds: float, until: Kind | None = None) -> list[Message]:
    """Everything but heartbeats that reaches the inbox within `seconds` (or until a message of kind `until`)."""
    received, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if inbox.poll(left * 1000):
            message = receive_message(inbox)
            if message.kind is not Kind.HEARTBEAT:
                received.append(message)
                if message.kind is until:
                    break
    return received


def test_unauthorised_peers_get_nothing_through_to_a_worker(tmp_path, keys):
    address = f"tcp://127.0.0.1:{free_port_block()}"
    endpoints = worker_endpoints(address)
    worker = start_worker("--bind", address, "--keys", str(keys.directory))
    # the authorised side: a client with the deployment's keys and a CURVE inbox for the worker's reports
    context = zmq.Context()
    authenticator = secure_context(context, keys)
    rogue_context = zmq.Context()
    try:
        inbox = make_server(context.socket(zmq.PULL), keys)
        inbox.bind("tcp://127.0.0.1:*")
        control = context.socket(zmq.DEALER)
        control.connect(endpoints.control)
        feed = context.socket(zmq.PUSH)
        feed.connect(endpoints.forward)
        assert request(control, "ping", timeout=60)["ok"], "an authorised client is answered"
        assert request(control, "configure", config=stage_config(inbox.getsockopt(zmq.LAST_ENDPOINT).decode()))["ok"]
        feed.send_multipart(batch(0))
        trained = drain(inbox, 60, until=Kind.TRAIN_RESULT)
        assert [message.kind for message in trained] == [Kind.TRAIN_RESULT], \
            f"the authorised path works end to end: {[(m.kind.name, m.meta) for m in trained]}"
        before = request(control, "metrics")["metrics"]
        assert before["messages"].get("received_forward") == 1 and before["steps"] == 1 and not before["errors"]

        # three rogues: no CURVE at all; CURVE with a key pair that is not authorised; the authorised
        # client's public key (it is public) with a secret key that does not belong to it
        stranger = load_keys(create_keys(tmp_path / "stranger"))
        rogues = {
            "plaintext": {},
            "unauthorised key": {zmq.CURVE_SECRETKEY: stranger.client_secret, zmq.CURVE_PUBLICKEY: stranger.client_public,
                                 zmq.CURVE_SERVERKEY: keys.server_public},
            "stolen public key": {zmq.CURVE_SECRETKEY: stranger.client_secret, zmq.CURVE_PUBLICKEY: keys.client_public,
                                  zmq.CURVE_SERVERKEY: keys.server_public},
        }
        controls = []
        for name, options in rogues.items():
            sockets = {}
            for path, kind in (("control", zmq.DEALER), ("forward", zmq.PUSH), ("backward", zmq.PUSH)):
                rogue = rogue_context.socket(kind)
                rogue.setsockopt(zmq.LINGER, 0)
                for option, value in options.items():
                    rogue.setsockopt(option, value)
                rogue.connect(getattr(endpoints, path))
                sockets[path] = rogue
            controls.append((name, sockets["control"]))
            rogue_config = stage_config("tcp://127.0.0.1:9", job="rogue")
            attempts = [
                (sockets["control"], encode(Message(Kind.CONTROL, JOB, meta={"command": "ping"}))),
                (sockets["control"], encode(Message(Kind.CONTROL, JOB, meta={"command": "metrics"}))),
                (sockets["control"], encode(Message(Kind.CONTROL, "rogue", meta={"command": "configure", "config": rogue_config}))),
                (sockets["control"], encode(Message(Kind.CONTROL, JOB, meta={"command": "stop"}))),
                (sockets["control"], [b"\x00garbage"]),
                (sockets["forward"], batch(1)),
                (sockets["forward"], [b"\xc1 not msgpack"]),
                (sockets["backward"], encode(Message(Kind.BACKWARD, JOB, 0, 0, 1, {}, {"target": np.zeros((16, 10), np.float32)}))),
            ]
            for target, frames in attempts:
                try:
                    target.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # nothing to queue on: even better
        reports = drain(inbox, 4)
        for name, rogue_control in controls:
            assert not rogue_control.poll(0), f"the {name} rogue got a reply"
        assert reports == [], f"rogue traffic made the worker report {[m.kind.name for m in reports]}"
        after = request(control, "metrics")["metrics"]
        received = {key: count for key, count in after["messages"].items() if key.startswith("received")}
        assert after["steps"] == 1 and received == {"received_forward": 1}, f"no rogue message reached the worker: {received}"
        assert not after["errors"], f"no rogue message was even rejected: {after['errors']}"
        assert request(control, "ping")["ok"] and worker.poll() is None, "the worker still serves its own job"
    finally:
        authenticator.stop()
        context.destroy(linger=0)
        rogue_context.destroy(linger=0)
        stop(worker)


def test_training_over_tcp_with_keys_learns(data_root, tmp_path, keys):
    """Local workers on loopback tcp, every socket CURVE: it only runs at all if both ends use the keys."""
    job = small_job(data_root, tmp_path / "runs", keys=str(keys.directory))
    folder, summary = run_job(job, transport="tcp", show_progress=False)
    assert summary["test_accuracy"] > LEARNED, summary


def test_binding_beyond_loopback_without_keys_fails_before_anything_starts(data_root, tmp_path, keys):
    port = free_port_block()
    for extra in ([], ["--insecure"]):
        worker = start_worker("--bind", f"tcp://0.0.0.0:{port}", *extra)
        try:
            _, stderr = worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                stop(worker)
        assert worker.returncode == 2, stderr
        assert "tcp://0.0.0.0" in stderr and "dni keys" in stderr, stderr
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", port))  # it never bound

    with pytest.raises(ProtocolError, match="dni keys"):
        Pipeline("job", RemoteWorkers([worker_endpoints(f"tcp://127.0.0.1:{port}")], 0, "tcp://0.0.0.0:*"))

    results = tmp_path / "runs"
    job = small_job(data_root, results)
    remote = with_addresses(job, [f"tcp://10.1.2.{stage}:5555" for stage in range(3)])
    loopback = with_addresses(job, [f"tcp://127.0.0.1:{5555 + 3 * stage}" for stage in range(3)])
    with pytest.raises(ProtocolError, match=r"tcp://10\.1\.2\.0:5555.*dni keys"):
        run_job(replace(remote, insecure=True), show_progress=False)
    with pytest.raises(ProtocolError, match="remote workers need CURVE keys.*dni keys"):
        run_job(loopback, show_progress=False)
    with pytest.raises(ProtocolError, match=r"tcp://0\.0\.0\.0:5550.*dni keys"):
        run_job(replace(loopback, insecure=True), bind="tcp://0.0.0.0:5550", show_progress=False)
    with pytest.raises(ProtocolError, match=re.escape(str(tmp_path / "absent")) + ".*dni keys"):
        run_job(replace(remote, keys=str(tmp_path / "absent")), show_progress=False)
    assert not results.exists(), "no run folder was made"
