"""Fuzzing: the decoder answers any input with a message or a ProtocolError, never anything else;
a live worker takes thousands of hostile messages and still trains correctly afterwards."""
from __future__ import annotations

import random
import time

import msgpack
import numpy as np
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from coordinator.data import load_dataset, train_batches
from protocol import Kind, Message, ProtocolError, decode, encode, receive_message
from tests.live_worker import JOB, coordinator_side, forward, request, stage_config, worker  # noqa: F401 (fixture)

VALID = encode(Message(Kind.FORWARD, JOB, 1, 1, 0, {"eval": 1},
                       {"x": np.zeros((2, 1, 28, 28), np.float32), "labels": np.zeros(2, np.int64)}))
HEADER = msgpack.unpackb(VALID[0])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def decodes_or_refuses(frames) -> None:
    try:
        message = decode(frames)
    except ProtocolError:
        return
    assert isinstance(message, Message)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_any_bytes(frames):
    decodes_or_refuses(frames)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(HEADER)), msgpack_values, max_size=len(HEADER)), st.lists(st.binary(max_size=64), max_size=3))
def test_mutated_headers(changes, frames):
    header = {**HEADER, **changes}
    decodes_or_refuses([msgpack.packb(header, use_bin_type=True), *frames])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.sampled_from(["float32", "int64", "uint8", "float16", "object", "<f4", ""]),
                          st.lists(st.integers(-3, 2**40), max_size=4)), max_size=3), st.lists(st.binary(max_size=64), max_size=3))
def test_mutated_tensor_specs(specs, frames):
    header = {**HEADER, "t": [list(spec) for spec in specs]}
    decodes_or_refuses([msgpack.packb(header, use_bin_type=True), *frames])


def hostile_messages(rng: random.Random, count: int) -> list[tuple[str, list[bytes]]]:
    """(socket, frames): random bytes, mutated headers, truncated or misdeclared tensors, wrong kinds."""
    messages = []
    for _ in range(count):
        choice = rng.randrange(6)
        header = dict(HEADER)
        if choice == 0:
            frames = [rng.randbytes(rng.randrange(1, 200)) for _ in range(rng.randrange(1, 4))]
        elif choice == 1:
            header[rng.choice(sorted(HEADER))] = rng.choice([None, -1, 2**40, "x", [1, 2], {"a": 1}, 3.5, True])
            frames = [msgpack.packb(header), *VALID[1:]]
        elif choice == 2:
            frames = [VALID[0], bytes(VALID[1])[:rng.randrange(len(VALID[1]))], VALID[2]]
        elif choice == 3:
            header["t"] = [["x", "float32", [rng.randrange(1, 5), 1, 28, 28]], ["labels", "int64", [2]]]
            frames = [msgpack.packb(header), *VALID[1:]]
        elif choice == 4:
            header["k"] = rng.choice([int(kind) for kind in Kind])
            frames = [msgpack.packb(header), *VALID[1:]]
        else:
            header["b"] = rng.randrange(-5, 5)
            nan = np.full((2, 1, 28, 28), np.nan, np.float32)
            frames = [msgpack.packb(header), nan.tobytes(), VALID[2]]
        messages.append((rng.choice(["forward", "backward", "control"]), frames))
    return messages


def test_live_worker_survives_thousands_of_hostile_messages_then_trains(worker, data_root):  # noqa: F811
    address, context = worker
    endpoints, control, inbox, inbox_address = coordinator_side(context, address)
    assert request(control, "configure", config=stage_config(inbox_address))["ok"]
    sockets = {"forward": context.socket(zmq.PUSH), "backward": context.socket(zmq.PUSH)}
    sockets["forward"].connect(endpoints.forward)
    sockets["backward"].connect(endpoints.backward)
    rogue_control = context.socket(zmq.DEALER)
    rogue_control.connect(endpoints.control)
    sockets["control"] = rogue_control

    hostile = hostile_messages(random.Random(1234), 3000)
    for name, frames in hostile:
        sockets[name].send_multipart(frames)

    data = load_dataset("mnist", data_root, download=False).subset(2560, 10)
    batches = [(x.numpy(), y.numpy()) for _, x, y in train_batches(data, 64, 0, 40)]
    for step, (x, labels) in enumerate(batches, start=100):
        sockets["forward"].send_multipart(forward(step, x, labels))
    losses = []
    deadline = time.monotonic() + 180
    while len(losses) < len(batches) and time.monotonic() < deadline:
        if inbox.poll(1000):
            message = receive_message(inbox)
            if message.kind is Kind.TRAIN_RESULT and message.batch >= 100:
                losses.append(message.meta["loss_sum"] / message.meta["count"])
    assert len(losses) == len(batches), f"trained on {len(losses)} of {len(batches)} good batches after {len(hostile)} hostile ones"
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    metrics = request(control, "metrics")["metrics"]
    print(f"hostile inputs tried: {len(hostile)}; rejected by category: {metrics['errors']}")
    assert sum(metrics["errors"].values()) >= 0.9 * len(hostile)
