"""A live worker process meets hostile input on every socket, rejects each message with a clear,
reported error, and goes on training correctly on the good batches in between (a recurrent stage's
chunks too)."""
from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from dni.coordinator.data.dataset import load_dataset, train_batches
from dni.protocol import Kind, Limits, Message, encode, receive_message, send_message
from tests.e2e.live_worker import JOB, coordinator_side, forward, request, stage_config, worker  # noqa: F401 (fixture)
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec, SynthesizerSpec
from dni.workers.stage.timing import TRANSPORT, spans_from_arrays
from dni.testing import chain_edges

pytestmark = pytest.mark.e2e


def test_worker_survives_hostile_input_and_keeps_training(worker, data_root):
    endpoints, context = worker
    endpoints, control, inbox, inbox_address = coordinator_side(context, endpoints)

    control.send_multipart([b"\x00garbage"])
    assert control.poll(30_000)
    assert "not valid msgpack" in receive_message(control).meta["error"]
    assert "unknown control command 'dance'" in request(control, "dance")["error"]
    assert "unknown stage kind 'nope'" in request(control, "configure", config=stage_config(inbox_address, spec={
        "kind": "nope", "params": {}, "synthesizer": {"kind": "mlp", "params": {}}, "device": "cpu"}))["error"]
    assert "mode 'turbo'" in request(control, "configure", config=stage_config(inbox_address, mode="turbo"))["error"]
    assert "window must be at least 1" in request(control, "configure", config=stage_config(inbox_address, window=0))["error"]
    reply = request(control, "configure", config=stage_config(inbox_address))
    assert reply["ok"] and reply["output_shape"] == [10]

    data = load_dataset("mnist", data_root, download=False).subset(2560, 10)
    batches = [(x.numpy(), y.numpy()) for _, x, y in train_batches(data, 64, 0, 40)]
    x0, y0 = batches[0]
    good_header = msgpack.unpackb(forward(0, x0, y0)[0])
    hostile = [
        [b"\xc1 not msgpack"],
        [msgpack.packb({**good_header, "v": 2}), *forward(0, x0, y0)[1:]],
        forward(0, x0.astype(np.float64), y0),
        forward(0, x0.reshape(64, 784), y0),
        forward(0, x0, y0 + 20),
        forward(0, x0, y0, job="someone-else"),
        forward(0, x0, y0, kind=Kind.BACKWARD),
        [msgpack.packb({**good_header, "t": [["x", "float32", [64, 1, 28, 28]], ["labels", "int64", [64]]]}),
         forward(0, x0, y0)[1][:1000], forward(0, x0, y0)[2]],
    ]
    feed = context.socket(zmq.PUSH)
    feed.connect(endpoints.forward)
    back = context.socket(zmq.PUSH)
    back.connect(endpoints.backward)
    tried = 0
    for step, (x, labels) in enumerate(batches):
        for frames in hostile:
            feed.send_multipart(frames)
            tried += 1
        back.send_multipart(encode(Message(Kind.BACKWARD, JOB, 999, 0, 1, {}, {"target": np.zeros((64, 10), np.float32)})))
        tried += 1
        feed.send_multipart(forward(step, x, labels))

    refused_requests = 5
    results, lost_reports, refused_by_heartbeat = [], [], 0
    deadline = time.monotonic() + 120
    while (len(results) < len(batches) or refused_by_heartbeat < tried + refused_requests) and time.monotonic() < deadline:
        if inbox.poll(1000):
            message = receive_message(inbox)
            if message.kind is Kind.TRAIN_RESULT:
                results.append(message.meta["loss_sum"] / message.meta["count"])
            elif message.kind is Kind.ERROR:
                lost_reports.append(message.meta["lost_batch"])
            elif message.kind is Kind.HEARTBEAT:
                refused_by_heartbeat = message.meta["refused"]
    assert len(results) == len(batches), "every good batch was trained on"
    assert np.mean(results[-5:]) < 0.6 * np.mean(results[:5]), f"loss fell: {results[:5]} -> {results[-5:]}"
    metrics = request(control, "metrics")["metrics"]
    assert sum(metrics["errors"].values()) == tried + refused_requests, metrics["errors"]
    assert refused_by_heartbeat == tried + refused_requests, "the heartbeats carry the complete count"
    # only the refusals that drop a batch of this job are reported one by one: bad dtype, bad shape, bad labels
    assert lost_reports == [0] * 3 * len(batches)
    assert request(control, "ping")["ok"]


def test_activity_spans_travel_as_frames_not_in_the_header(worker, data_root):
    """A long run records many spans; they must reach a coordinator whose header limit is far below their size."""
    endpoints, context = worker
    endpoints, control, inbox, inbox_address = coordinator_side(context, endpoints)
    assert request(control, "configure", config=stage_config(inbox_address, record_spans=True))["ok"]
    data = load_dataset("mnist", data_root, download=False).subset(64 * 300, 10)
    feed = context.socket(zmq.PUSH)
    feed.connect(endpoints.forward)
    for step, (_, x, labels) in enumerate(train_batches(data, 64, 0, 300)):
        feed.send_multipart(forward(step, x.numpy(), labels.numpy()))
    results = 0
    while results < 300 and inbox.poll(30_000):
        results += receive_message(inbox).kind is Kind.TRAIN_RESULT
    assert results == 300
    send_message(control, Message(Kind.CONTROL, JOB, meta={"command": "metrics", "spans": True}))
    assert control.poll(30_000)
    reply = receive_message(control, Limits(max_header_bytes=8192))
    spans = spans_from_arrays(reply.tensors)
    assert len(spans) >= 3 * 300, "forward, backward and transport spans of every batch"  # ~40 bytes each in a header
    activities = {activity for activity, _, _ in spans}
    assert {"forward", "backward"} <= activities and activities & set(TRANSPORT), "transport: receive, decode, ... send"
    assert all(start <= end for _, start, end in spans)


def chunk(batch, x, start=True, last=False, job=JOB, sender=-1, **tensors):
    """A chunk as the coordinator sends it to a first stage that uses no labels: its examples, its place in the sequence."""
    meta = {} if start is None else {"start": start, "last": last}
    arrays = {"x": x, **tensors} if x is not None else tensors
    return encode(Message(Kind.FORWARD, job, batch, batch, sender, meta, arrays))


def test_a_recurrent_worker_refuses_bad_chunks_and_goes_on_with_its_sequences(worker):
    endpoints, context = worker
    endpoints, control, inbox, inbox_address = coordinator_side(context, endpoints)
    downstream = context.socket(zmq.PULL)
    downstream.bind("tcp://127.0.0.1:*")
    config = StageAssignment(
        job=JOB, index=0, num_stages=2, spec=StageSpec("lstm", {"hidden": 8}, SynthesizerSpec("mlp", {"hidden": 8, "layers": 1})),
        mode=Mode.SG, input_shape=(3,), num_classes=2, optimizer=OptimizerSpec("adam", 1e-2), seed=0, window=2, threads=1,
        coordinator=inbox_address, **chain_edges(0, (3,), None, downstream.getsockopt(zmq.LAST_ENDPOINT).decode()), loss="bits", truncation=4)
    reply = request(control, "configure", config=config.to_wire())
    assert reply["ok"] and reply["output_shape"] == [8]

    rng = np.random.default_rng(0)
    x, labels, mask = rng.normal(size=(5, 4, 3)).astype(np.float32), np.ones((5, 4, 2), np.float32), np.ones((5, 4), np.float32)
    hostile = [
        chunk(0, rng.normal(size=(5, 5, 3)).astype(np.float32)),  # longer than the truncation
        chunk(0, None, labels=labels, mask=mask),  # no examples: a labels part, which this stage does not take
        chunk(0, x, sender=1),  # along no edge of this stage
        chunk(0, x, start=None),
        chunk(0, np.full((5, 4, 3), np.nan, np.float32)),
        forward(0, x[:, 0], np.zeros(5, np.int64)),  # a feed-forward batch: no time axis
    ]
    feed, back = context.socket(zmq.PUSH), context.socket(zmq.PUSH)
    feed.connect(endpoints.forward)
    back.connect(endpoints.backward)
    chunks = 12
    for number in range(chunks):
        for frames in hostile:
            feed.send_multipart(frames)
        feed.send_multipart(chunk(number, x, start=number % 3 == 0, last=number % 3 == 2))
        assert downstream.poll(30_000), f"chunk {number} never left the stage"
        onward = receive_message(downstream)
        assert (onward.batch, onward.meta) == (number, {"start": number % 3 == 0, "last": number % 3 == 2})
        assert list(onward.tensors) == ["x"] and onward.tensors["x"].shape == (5, 4, 8), "labels and mask go to the readout"
        back.send_multipart(encode(Message(Kind.BACKWARD, JOB, number, 0, 1, {}, {"target": np.ones((5, 4, 8), np.float32)})))
    deadline = time.monotonic() + 60
    while (metrics := request(control, "metrics")["metrics"])["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics["steps"] == chunks and metrics["pending"] == 0, "every target came back and was taken"
    assert sum(metrics["errors"].values()) == len(hostile) * chunks, metrics["errors"]
    assert metrics["synthesizer_loss"] > 0, "the synthesizer between stages learned from the targets"
    assert request(control, "ping")["ok"]
