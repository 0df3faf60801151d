"""coordinator/pools/pipeline.py: the coordinator's side of the wire against workers played by the test over real sockets: a stage's failure,
a lost batch, a dead connection and an idle pipeline each end a wait with an error that names the stage."""
from __future__ import annotations

import threading
import time

import pytest
import zmq

from dni.coordinator.pools.pipeline import Pipeline
from dni.errors import StageFailed, WorkerLost
from dni.coordinator.pools.pool import RemoteWorkers
from dni.protocol import Endpoints, Kind, Message, send_message

JOB = "pipeline-test"


class FakeWorker:
    """A worker's three sockets, bound by the test; it answers nothing unless told to."""

    def __init__(self, context: zmq.Context, stage: int) -> None:
        self.stage = stage
        self.control = context.socket(zmq.ROUTER)
        self.control.bind("tcp://127.0.0.1:*")
        self.endpoints = Endpoints(self.control.getsockopt(zmq.LAST_ENDPOINT).decode(), "tcp://127.0.0.1:1", "tcp://127.0.0.1:1")
        self.report = None

    def connect_report(self, context: zmq.Context, inbox: str) -> None:
        self.report = context.socket(zmq.PUSH)
        self.report.connect(inbox)

    def beat(self, **status) -> None:
        meta = {"busy_for": 0.1, "steps": 0, "handled": 0, "pending": 0, "refused": 0, "failure": None, **status}
        send_message(self.report, Message(Kind.HEARTBEAT, JOB, -1, meta["steps"], self.stage, meta))


def pipeline_of_fakes(heartbeat_timeout: float = 10.0):
    """A pipeline whose three workers the test plays."""
    context = zmq.Context()
    workers = [FakeWorker(context, stage) for stage in range(3)]
    pipeline = Pipeline(JOB, RemoteWorkers([worker.endpoints for worker in workers], 0, "tcp://127.0.0.1:*"),
                        heartbeat_timeout=heartbeat_timeout)
    for worker in workers:
        worker.connect_report(context, pipeline.inbox_address)
    yield pipeline, workers
    pipeline.close()
    context.destroy(linger=0)


@pytest.fixture
def pipeline():
    yield from pipeline_of_fakes()


def test_a_failure_in_a_heartbeat_ends_the_wait_naming_the_stage(pipeline):
    pipeline, workers = pipeline
    workers[1].beat(failure="RuntimeError: boom")
    with pytest.raises(StageFailed, match=r"stage 1 failed: RuntimeError: boom \(traceback in that worker's log\)") as error:
        pipeline.receive(5.0)
    assert error.value.stage == 1


def test_a_lost_batch_report_names_both_stages(pipeline):
    pipeline, workers = pipeline
    send_message(workers[2].report, Message(Kind.ERROR, JOB, -1, 0, 2, {"error": "x must be float32", "lost_batch": 7, "from_stage": 1}))
    with pytest.raises(StageFailed, match="stage 2 refused batch 7 from stage 1 and so lost it: x must be float32"):
        pipeline.receive(5.0)


def test_a_flush_that_waits_on_an_idle_pipeline_ends(pipeline):
    pipeline, workers = pipeline
    beating = threading.Event()

    def beat() -> None:
        while not beating.wait(0.2):
            for worker in workers:
                worker.beat(pending=2 if worker.stage == 0 else 0)

    threading.Thread(target=beat, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(StageFailed, match="stage 0 still waits for 2 target.* every stage idle"):
            pipeline.request(0, "flush", timeout=30, stall_timeout=1.0)
    finally:
        beating.set()
    assert time.monotonic() - started < 5


def test_progress_or_a_busy_stage_is_not_idleness(pipeline):
    pipeline, workers = pipeline
    workers[0].beat(handled=1)
    assert pipeline.receive(0.3) is None
    assert pipeline.idle_for() < 0.5, "a stage took in a message"
    time.sleep(0.6)
    assert pipeline.idle_for() >= 0.6
    workers[2].beat(busy_for=5.0)
    assert pipeline.receive(0.3) is None
    assert pipeline.idle_for() == 0.0, "a stage inside a long step is working"


def test_a_dropped_connection_names_its_stage(pipeline):
    pipeline, workers = pipeline
    time.sleep(0.3)  # the control connections come up
    assert pipeline.gone(grace=0.0) is None
    workers[1].control.close(linger=0)
    deadline = time.monotonic() + 5
    while pipeline.gone(grace=0.0) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pipeline.gone(grace=0.0) == 1
    with pytest.raises(StageFailed, match="stage 1 .* lost its connection"):
        pipeline.receive(5.0)


def test_a_request_whose_worker_is_replaced_at_once_ends_as_a_lost_worker(pipeline):
    """A container restarted within the disconnect grace: the new worker never saw the request, so nobody answers it."""
    pipeline, workers = pipeline
    time.sleep(0.3)  # the control connections come up
    address = workers[1].endpoints.control
    replacement = zmq.Context.instance().socket(zmq.ROUTER)

    def replace_once_the_request_is_in() -> None:
        workers[1].control.recv_multipart()
        workers[1].control.close(linger=0)
        deadline = time.monotonic() + 5
        while True:  # ZeroMQ closes a socket in its own thread: the port comes free a moment later
            try:
                replacement.bind(address)
                return
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    taker = threading.Thread(target=replace_once_the_request_is_in)
    taker.start()
    try:
        started = time.monotonic()
        with pytest.raises(WorkerLost, match="stage 1 .* lost its connection while answering 'metrics'") as lost:
            pipeline.request(1, "metrics", timeout=30.0)
        assert lost.value.stage == 1 and time.monotonic() - started < 10
    finally:
        taker.join()
        replacement.close(linger=0)


@pytest.fixture
def quick_pipeline():
    """One that gives up on a silent worker after half a second."""
    yield from pipeline_of_fakes(heartbeat_timeout=0.5)


def test_a_request_ends_once_a_stage_serving_the_job_falls_silent_naming_it(quick_pipeline):
    """A frozen worker is lost whatever the coordinator waits for: here a checkpoint that never comes."""
    pipeline, workers = quick_pipeline
    for worker in workers:
        worker.beat()
    assert pipeline.receive(0.2) is None
    assert pipeline.watched == [True, True, True]
    started = time.monotonic()
    with pytest.raises(WorkerLost, match=r"stage \d .* sent nothing for") as lost:
        pipeline.request(2, "checkpoint", {"path": "x"}, timeout=30)
    assert time.monotonic() - started < 3
    assert lost.value.stage in (0, 1, 2)


def test_a_worker_serving_no_job_yet_is_not_judged_by_its_silence(quick_pipeline):
    """A worker starting up, or a replacement being pinged, sends no beats: only its answer is waited for."""
    pipeline, workers = quick_pipeline

    def answer_late() -> None:
        frames = workers[1].control.recv_multipart()
        time.sleep(1.0)
        send_message(workers[1].control, Message(Kind.REPLY, meta={"ok": True}), [frames[0]])

    responder = threading.Thread(target=answer_late)
    responder.start()
    try:
        assert pipeline.request(1, "ping", timeout=10).meta["ok"]
    finally:
        responder.join()
    assert pipeline.watched == [False, False, False]
