"""dni/testing.py: the hostile peer's messages are reproducible and cover every kind of damage."""
from __future__ import annotations

import random

import pytest

from dni.testing import hostile_messages, valid_frames, valid_header
from dni.protocol import Kind, ProtocolError, decode


def test_the_valid_batch_decodes_as_an_evaluation_batch_of_the_job():
    message = decode(valid_frames("job-7"))
    assert (message.kind, message.job, message.meta, sorted(message.tensors)) == (Kind.FORWARD, "job-7", {"eval": 1}, ["labels", "x"])
    assert valid_header("job-7")["j"] == "job-7"


def test_the_same_seed_gives_the_same_messages():
    assert hostile_messages(random.Random(3), 50, "a") == hostile_messages(random.Random(3), 50, "a")


def test_messages_go_to_every_socket_and_most_fail_to_decode():
    messages = hostile_messages(random.Random(11), 300, "a")
    assert {socket for socket, _ in messages} == {"forward", "backward", "control"}
    refused = 0
    for _, frames in messages:
        try:
            decode(frames)
        except ProtocolError:
            refused += 1
    assert refused > len(messages) // 2


@pytest.mark.parametrize("seed", range(3))
def test_every_message_has_at_least_one_frame(seed):
    assert all(frames for _, frames in hostile_messages(random.Random(seed), 100, "a"))
