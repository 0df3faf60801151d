"""What the tests play of the coordinator against a live worker process: control requests,
stage configurations and batches, all over real sockets."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import zmq

from dni.protocol import Endpoints, Kind, Message, encode, receive_message, send_message
from dni.spec import Mode
from dni.spec import OptimizerSpec, StageAssignment, StageSpec
from dni.testing import chain_edges

JOB = "live-worker-test"


@pytest.fixture
def worker(tmp_path):
    """A worker process on three loopback ports the system picks (told in its ready file), and a ZeroMQ context."""
    ready = tmp_path / "worker.ready"
    process = subprocess.Popen([sys.executable, "-m", "dni.workers", "--bind", "tcp://127.0.0.1:0", "--ready-file", str(ready),
                                "--log-level", "ERROR"])
    deadline = time.monotonic() + 60
    while not ready.is_file():
        assert process.poll() is None and time.monotonic() < deadline, "the worker never said where it listens"
        time.sleep(0.05)
    report = json.loads(ready.read_text())
    assert report["pid"] == process.pid and len({report[name] for name in ("control", "forward", "backward")}) == 3
    context = zmq.Context()
    yield Endpoints(report["control"], report["forward"], report["backward"]), context
    context.destroy(linger=0)
    process.terminate()
    process.wait(10)


def coordinator_side(context, endpoints):
    """A control DEALER to the worker and a bound inbox for its reports."""
    control = context.socket(zmq.DEALER)
    control.connect(endpoints.control)
    inbox = context.socket(zmq.PULL)
    inbox.bind("tcp://127.0.0.1:*")
    return endpoints, control, inbox, inbox.getsockopt(zmq.LAST_ENDPOINT).decode()


def request(control, command, timeout: float = 30.0, **meta) -> dict:
    send_message(control, Message(Kind.CONTROL, JOB, meta={"command": command, **meta}))
    assert control.poll(timeout * 1000), f"no reply to {command}"
    return receive_message(control).meta


def stage_config(inbox: str, **changes) -> dict:
    """A one-stage job (Flatten + Linear to 10 classes) on MNIST-shaped input, in wire form."""
    config = StageAssignment(job=JOB, index=0, num_stages=1, spec=StageSpec("linear", {"features": 10}), mode=Mode.BACKPROP,
                         input_shape=(1, 28, 28), num_classes=10, optimizer=OptimizerSpec("adam", 1e-3), seed=0,
                         window=1, threads=1, coordinator=inbox, **chain_edges(0, (1, 28, 28))).to_wire()
    config.update(changes)
    return config


def forward(batch, x, labels, job=JOB, kind=Kind.FORWARD):
    return encode(Message(kind, job, batch, batch, -1, {}, {"x": x, "labels": labels}))
