"""A hostile peer: malformed, misdeclared and foreign messages, and a bounded flood of them.

What a worker must refuse, count and survive (`tests/e2e/test_fuzz.py`), and what
`benchmarks/flood` throws at a live run to measure that the logs stay small. It
lives here, not in the tests, so that the benchmark needs nothing but dni.
"""
from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any, Optional

import msgpack
import numpy as np
import zmq

from dni.protocol import Kind, Message, encode
from dni.spec import Edge

__all__ = ["chain_edges", "flood", "hostile_messages", "valid_frames", "valid_header", "wait_for_endpoints"]

def chain_edges(index: int, input_shape: tuple[int, ...], upstream: Optional[str] = None,
                downstream: Optional[str] = None) -> dict[str, Any]:
    """The `inputs` and `outputs` of stage `index` of a chain, as a `StageAssignment` takes them: the data (or the
    stage before, whose backward socket is `upstream`) in, the stage after (its forward socket `downstream`) out."""
    source = Edge("data", -1, None, tuple(input_shape)) if upstream is None else \
        Edge(f"stage{index - 1}", index - 1, upstream, tuple(input_shape))
    outputs = () if downstream is None else (Edge(f"stage{index + 1}", index + 1, downstream),)
    return {"inputs": (source,), "outputs": outputs}


SOCKETS = (("control", zmq.DEALER), ("forward", zmq.PUSH), ("backward", zmq.PUSH))


def valid_frames(job: str) -> list[bytes]:
    """A well-formed evaluation batch of `job` (two MNIST images): what the hostile messages mutate."""
    return encode(Message(Kind.FORWARD, job, 1, 1, 0, {"eval": 1},
                          {"x": np.zeros((2, 1, 28, 28), np.float32), "labels": np.zeros(2, np.int64)}))


def valid_header(job: str) -> dict[str, Any]:
    return msgpack.unpackb(valid_frames(job)[0])


def hostile_messages(rng: random.Random, count: int, job: str) -> list[tuple[str, list[bytes]]]:
    """(socket, frames): random bytes, mutated headers, truncated or misdeclared tensors, wrong kinds, NaN batches."""
    valid = valid_frames(job)
    messages = []
    for _ in range(count):
        choice = rng.randrange(6)
        header = valid_header(job)
        if choice == 0:
            frames = [rng.randbytes(rng.randrange(1, 200)) for _ in range(rng.randrange(1, 4))]
        elif choice == 1:
            header[rng.choice(sorted(header))] = rng.choice([None, -1, 2**40, "x", [1, 2], {"a": 1}, 3.5, True])
            frames = [msgpack.packb(header), *valid[1:]]
        elif choice == 2:
            frames = [valid[0], bytes(valid[1])[:rng.randrange(len(valid[1]))], valid[2]]
        elif choice == 3:
            header["t"] = [["x", "float32", [rng.randrange(1, 5), 1, 28, 28]], ["labels", "int64", [2]]]
            frames = [msgpack.packb(header), *valid[1:]]
        elif choice == 4:
            header["k"] = rng.choice([int(kind) for kind in Kind])
            frames = [msgpack.packb(header), *valid[1:]]
        else:
            header["b"] = rng.randrange(-5, 5)
            nan = np.full((2, 1, 28, 28), np.nan, np.float32)
            frames = [msgpack.packb(header), nan.tobytes(), valid[2]]
        messages.append((rng.choice(["forward", "backward", "control"]), frames))
    return messages


def flood(endpoints: list[dict[str, str]], seconds: float, context: zmq.Context, job: str = "flood") -> int:
    """Hostile messages round-robin at every socket of every worker, as fast as they go, for `seconds`;
    returns how many went."""
    sockets = []
    for stage in endpoints:
        for name, kind in SOCKETS:
            socket = context.socket(kind)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, 1000)
            socket.connect(stage[name])
            sockets.append(socket)
    messages = [frames for _, frames in hostile_messages(random.Random(7), 500, job)]
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for socket in sockets:
            try:
                socket.send_multipart(messages[sent % len(messages)], flags=zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
    return sent


def wait_for_endpoints(log_path: Path, stages: int, timeout: float = 120.0) -> list[dict[str, str]]:
    """The workers' addresses, as the coordinator logs them at start-up."""
    pattern = re.compile(r"stage (\d+) listens at control (\S+), forward (\S+), backward (\S+)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.findall(log_path.read_text())
        if len(found) == stages:
            return [{"control": control, "forward": forward, "backward": backward} for _, control, forward, backward in found]
        time.sleep(0.1)
    raise RuntimeError(f"no worker addresses in the log after {timeout:.0f}s: {log_path.read_text()[-2000:]}")
