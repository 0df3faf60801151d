"""workers/loop/commands.py: the control commands as a table; what each answers, and what is refused."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from dni.errors import ConfigError
from dni.protocol import Endpoints, Kind, Message, receive_message, send_message
from dni.workers.loop.commands import COMMANDS, Command, answer, parse_command
from dni.spec import EXIT_STOPPED
from dni.workers.loop.validation import Rejected
from dni.workers.loop.worker import Worker

JOB = "unit-job"


class FakeHost:
    """What the commands see of a worker; a session stand-in with the few things they read."""

    def __init__(self, in_flight: int = 0, configured: bool = True) -> None:
        self.endpoints = Endpoints("ipc://c", "ipc://f", "ipc://b")
        self.ended: list[tuple[str, int]] = []
        self.session = SimpleNamespace(
            config=SimpleNamespace(job=JOB), last_heard=0.0, flush_waiters=[], output_shape=(10,), device="cpu",
            compute=SimpleNamespace(in_flight=in_flight, steps=7, state=lambda: {}),
            metrics=lambda profile=False: {"steps": 7}, timeline=SimpleNamespace(span_arrays=lambda: {"span_time": np.zeros((0, 2))}),
        ) if configured else None

    def start_session(self, config):
        self.session = SimpleNamespace(output_shape=(10,), edge_shapes={}, device="cpu", config=config, takes_labels=config.is_last)
        return self.session

    def end_session(self, why: str, exit_code: int) -> None:
        self.ended.append((why, exit_code))
        self.session = None


def control(command, job=JOB, **meta) -> Message:
    return Message(Kind.CONTROL, job, meta={"command": command, **meta})


def test_the_table_has_one_handler_for_every_command_and_nothing_else():
    assert set(COMMANDS) == set(Command)
    assert {command.value for command in Command} == {"ping", "configure", "flush", "metrics", "state", "checkpoint", "stop"}


@pytest.mark.parametrize("command", ["dance", "", "_command_ping", "PING", "__class__", 5, None, ["ping"]])
def test_an_unknown_command_is_refused(command):
    with pytest.raises(Rejected, match="unknown control command"):
        parse_command({"command": command})
    with pytest.raises(Rejected, match="unknown control command"):
        answer(FakeHost(), b"id", control(command))


def test_every_name_parses_to_its_command():
    assert all(parse_command({"command": command.value}) is command for command in Command)


def test_ping_answers_with_the_pid_and_the_endpoints():
    reply = answer(FakeHost(), b"id", control("ping"))
    assert reply.kind is Kind.REPLY and reply.meta == {"ok": True, "pid": os.getpid(), "endpoints": ["ipc://c", "ipc://f", "ipc://b"]}


def test_a_heartbeat_is_not_answered_but_shows_the_coordinator_alive():
    host = FakeHost()
    assert answer(host, b"id", Message(Kind.HEARTBEAT, JOB)) is None
    assert time.monotonic() - host.session.last_heard < 5
    stranger = FakeHost()
    answer(stranger, b"id", Message(Kind.HEARTBEAT, "someone-else"))
    assert stranger.session.last_heard == 0.0, "another job's messages say nothing of this job's coordinator"


def test_data_on_the_control_socket_is_refused():
    with pytest.raises(Rejected, match="FORWARD is not accepted on the control socket"):
        answer(FakeHost(), b"id", Message(Kind.FORWARD, JOB))


@pytest.mark.parametrize("command", ["flush", "metrics", "state", "checkpoint"])
def test_commands_about_a_job_need_one(command):
    with pytest.raises(Rejected, match="this worker has no job configured"):
        answer(FakeHost(configured=False), b"id", control(command, path="x"))


def test_flush_answers_at_once_when_nothing_is_in_flight_and_later_otherwise():
    assert answer(FakeHost(), b"id", control("flush")).meta == {"ok": True}
    busy = FakeHost(in_flight=2)
    assert answer(busy, b"id", control("flush")) is None
    assert busy.session.flush_waiters == [b"id"]


def test_checkpoint_needs_a_path_and_an_empty_pipeline():
    with pytest.raises(Rejected, match="checkpoint needs a 'path'"):
        answer(FakeHost(), b"id", control("checkpoint"))
    with pytest.raises(Rejected, match="2 batches still await targets: flush before a checkpoint"):
        answer(FakeHost(in_flight=2), b"id", control("checkpoint", path="stage.pt"))


def test_metrics_carry_spans_only_when_asked():
    assert answer(FakeHost(), b"id", control("metrics")).tensors == {}
    reply = answer(FakeHost(), b"id", control("metrics", spans=True))
    assert reply.meta == {"ok": True, "metrics": {"steps": 7}} and set(reply.tensors) == {"span_time"}


def test_stop_ends_the_session_as_stopped():
    host = FakeHost()
    assert answer(host, b"id", control("stop")).meta == {"ok": True}
    assert host.ended == [("the coordinator stopped it", EXIT_STOPPED)]


def test_configure_refuses_a_bad_assignment_and_answers_a_good_one_with_the_stage():
    with pytest.raises(ConfigError, match="stage config must be a map"):
        answer(FakeHost(), b"id", control("configure", config="nope"))
    wire = {"job": JOB, "index": 0, "num_stages": 1, "mode": "sg", "input_shape": [4], "num_classes": 10,
            "optimizer": {"name": "adam", "lr": 0.001}, "seed": 0, "window": 1, "threads": 1, "coordinator": "ipc://x",
            "inputs": [{"name": "data", "peer": -1, "address": None, "shape": [4]}], "outputs": [],
            "spec": {"kind": "linear", "params": {"features": 10}, "synthesizer": {"kind": "mlp", "params": {}}, "device": "cpu"}}
    host = FakeHost(configured=False)
    reply = answer(host, b"id", control("configure", config=wire))
    assert reply.meta["ok"] and reply.meta["output_shape"] == [10] and reply.meta["device"] == "cpu"
    assert reply.meta["takes_labels"] is True, "a head: the coordinator sends it the labels"
    assert host.session.config.loss == "cross_entropy", "a configure without 'loss' (an older coordinator) gets the default"


def test_a_worker_answers_an_unknown_command_with_an_error_and_counts_the_refusal(tmp_path):
    worker = Worker(f"ipc://{tmp_path}/worker")
    client = zmq.Context.instance().socket(zmq.DEALER)
    try:
        client.connect(worker.endpoints.control)
        send_message(client, control("dance"))
        worker.turn()
        assert client.poll(5000)
        reply = receive_message(client)
        assert reply.meta == {"ok": False, "error": "Rejected: unknown control command 'dance'"}
        assert worker.refusals.counts == {"Rejected": 1} and worker.running
    finally:
        client.close(linger=0)
        worker.close()
