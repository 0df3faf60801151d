"""workers/loop/validation.py: every refusal of an incoming data message, its text, and whether it loses the batch."""
from __future__ import annotations

import numpy as np
import pytest

from dni.protocol import Kind, Message
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec
from dni.workers.stage.blocks import WHOLE, Span
from dni.workers.loop.validation import Rejected, check_batch, check_fresh, check_kind, check_origin, check_target
from dni.testing import chain_edges

JOB = "unit-job"
SHAPE = (1, 2, 2)
CLASSES = 10


def assignment(input_shape=SHAPE, num_classes=CLASSES, loss="cross_entropy", truncation=0, nonfinite="reject") -> StageAssignment:
    """What the stage agreed to take: the fields `check_batch` reads, the rest a first stage's."""
    return StageAssignment(job=JOB, index=0, num_stages=2, spec=StageSpec("linear", {"features": 2}), mode=Mode.SG,
                           input_shape=input_shape, num_classes=num_classes, optimizer=OptimizerSpec(), seed=0, window=1,
                           threads=1, coordinator="inproc://c", **chain_edges(0, input_shape, None, "inproc://d"), nonfinite=nonfinite, loss=loss,
                           truncation=truncation)


FEEDFORWARD = assignment()


def batch_message(x=None, labels=None, kind=Kind.FORWARD, job=JOB, batch=3, **tensors) -> Message:
    x = np.zeros((4, *SHAPE), np.float32) if x is None else x
    labels = np.arange(4, dtype=np.int64) if labels is None else labels
    return Message(kind, job, batch, 0, 0, {}, {"x": x, "labels": labels, **tensors})


def refusal(check, *args) -> Rejected:
    with pytest.raises(Rejected) as caught:
        check(*args)
    return caught.value


def test_a_message_of_another_job_is_refused_and_loses_nothing():
    error = refusal(check_origin, batch_message(job="someone-else"), JOB, None)
    assert str(error) == "message for job 'someone-else', this worker serves 'unit-job'" and error.lost is None


def test_a_failed_stage_takes_no_more_data():
    error = refusal(check_origin, batch_message(), JOB, "RuntimeError: boom")
    assert str(error) == "this stage failed earlier (RuntimeError: boom) and takes no more data" and error.lost is None
    check_origin(batch_message(), JOB, None)


@pytest.mark.parametrize("socket, kind, accepted", [
    ("forward", Kind.FORWARD, True), ("forward", Kind.EVAL, True), ("forward", Kind.BACKWARD, False),
    ("backward", Kind.BACKWARD, True), ("backward", Kind.FORWARD, False), ("backward", Kind.CONTROL, False),
])
def test_each_data_socket_takes_its_own_kinds(socket, kind, accepted):
    message = batch_message(kind=kind)
    if accepted:
        check_kind(message, socket)
    else:
        error = refusal(check_kind, message, socket)
        assert str(error) == f"{kind.name} is not accepted on the {socket} socket" and error.lost is None


def test_a_training_batch_already_in_flight_is_a_duplicate_that_loses_nothing():
    error = refusal(check_fresh, batch_message(), True)
    assert str(error) == "batch 3 is already in flight (duplicate or replayed)" and error.lost is None
    check_fresh(batch_message(), False)
    check_fresh(batch_message(kind=Kind.EVAL), True)  # evaluation ids are the coordinator's own count


@pytest.mark.parametrize("message, text", [
    (Message(Kind.FORWARD, JOB, 3, 0, 0, {}, {"x": np.zeros((4, *SHAPE), np.float32)}),
     "FORWARD needs tensors 'x' and 'labels', got ['x']"),
    (batch_message(x=np.zeros((4, *SHAPE), np.float64)), "x must be float32 (B, 1, 2, 2), got float64 [4, 1, 2, 2]"),
    (batch_message(x=np.zeros((4, 4), np.float32)), "x must be float32 (B, 1, 2, 2), got float32 [4, 4]"),
    (batch_message(x=np.zeros((0, *SHAPE), np.float32), labels=np.zeros(0, np.int64)),
     "x must be float32 (B, 1, 2, 2), got float32 [0, 1, 2, 2]"),
    (batch_message(labels=np.arange(4, dtype=np.int32)), "labels must be int64 [4], got int32 [4]"),
    (batch_message(labels=np.arange(3, dtype=np.int64)), "labels must be int64 [4], got int64 [3]"),
    (batch_message(labels=np.array([0, 1, 2, 10])), "labels must lie in 0..9"),
    (batch_message(labels=np.array([0, -1, 2, 3])), "labels must lie in 0..9"),
    (batch_message(x=np.full((4, *SHAPE), np.nan, np.float32)), "x holds NaN or Inf values (policy: reject)"),
    (batch_message(kind=Kind.EVAL, x=np.full((4, *SHAPE), np.inf, np.float32)), "x holds NaN or Inf values (policy: reject)"),
])
def test_unusable_inputs_are_refused_and_lose_their_batch(message, text):
    error = refusal(check_batch, message, FEEDFORWARD)
    assert str(error) == text
    assert error.lost is message, "the coordinator must hear which batch is gone"


def test_good_inputs_come_back_with_no_nonfinite_count():
    message = batch_message()
    inputs = check_batch(message, FEEDFORWARD)
    assert inputs.x is message.tensors["x"] and inputs.labels is message.tensors["labels"] and inputs.nonfinite == 0
    assert inputs.mask is None and inputs.span == WHOLE, "a feed-forward batch is a whole sequence of one step"


def test_nonfinite_inputs_are_counted_not_refused_under_the_count_policy():
    x = np.zeros((4, *SHAPE), np.float32)
    x[1, 0, 0, 0] = np.nan
    assert check_batch(batch_message(x=x), assignment(nonfinite="count")).nonfinite == 1


def target_message(target=None, batch=3) -> Message:
    tensors = {} if target is None else {"target": target}
    return Message(Kind.BACKWARD, JOB, batch, 0, 2, {}, tensors)


def test_a_target_no_batch_awaits_is_refused_and_loses_nothing():
    error = refusal(check_target, target_message(np.zeros((4, 5), np.float32)), None, "reject")
    assert str(error) == "no batch 3 awaits a target (unknown, late or duplicate)" and error.lost is None


@pytest.mark.parametrize("target, got", [
    (None, "nothing"),
    (np.zeros((4, 5), np.float64), "float64 [4, 5]"),
    (np.zeros((4, 6), np.float32), "float32 [4, 6]"),
    (np.zeros((3, 5), np.float32), "float32 [3, 5]"),
])
def test_a_malformed_target_is_refused_and_loses_its_batch(target, got):
    message = target_message(target)
    error = refusal(check_target, message, (4, 5), "reject")
    assert str(error) == f"target for batch 3 must be float32 [4, 5], got {got}" and error.lost is message


def test_a_nonfinite_target_is_refused_or_counted_by_policy():
    target = np.zeros((4, 5), np.float32)
    target[0, 0] = np.inf
    message = target_message(target)
    error = refusal(check_target, message, (4, 5), "reject")
    assert str(error) == "target holds NaN or Inf values (policy: reject)" and error.lost is message
    assert check_target(message, (4, 5), "count").nonfinite == 1
    good = check_target(target_message(np.ones((4, 5), np.float32)), (4, 5), "reject")
    assert good.nonfinite == 0 and good.target.shape == (4, 5)


def chunk_message(x=None, labels=None, mask=None, meta=None, loss="bits") -> Message:
    """A sequence job's chunk: 2 sequences, 3 steps of 4 features, 2 outputs per step."""
    x = np.zeros((2, 3, 4), np.float32) if x is None else x
    if labels is None:
        labels = np.zeros((2, 3, 2), np.float32) if loss == "bits" else np.zeros((2, 3), np.int64)
    mask = np.ones((2, 3), np.float32) if mask is None else mask
    return Message(Kind.FORWARD, JOB, 3, 0, 0, {"start": True, "last": False} if meta is None else meta,
                   {"x": x, "labels": labels, "mask": mask})


def sequence(loss: str) -> StageAssignment:
    """A sequence job's stage: chunks of at most 3 steps of 4 features, 2 outputs (bits or classes) per step."""
    return assignment(input_shape=(4,), num_classes=2, loss=loss, truncation=3)


def test_a_good_chunk_comes_back_with_its_place_in_the_sequence():
    chunk = check_batch(chunk_message(), sequence("bits"))
    assert (chunk.span, chunk.nonfinite, chunk.x.shape, chunk.mask.shape) == (Span(True, False), 0, (2, 3, 4), (2, 3))
    shorter = check_batch(chunk_message(np.zeros((2, 1, 4), np.float32), np.zeros((2, 1), np.int64),
                                        np.zeros((2, 1), np.float32), loss="cross_entropy"), sequence("cross_entropy"))
    assert shorter.x.shape == (2, 1, 4), "a sequence's last chunk may be shorter than T"


@pytest.mark.parametrize("message, loss, text", [
    (chunk_message(x=np.zeros((2, 4, 4), np.float32)), "bits", "x must be float32 (B, T <= 3, 4), got float32 [2, 4, 4]"),
    (chunk_message(x=np.zeros((2, 3), np.float32)), "bits", "x must be float32 (B, T <= 3, 4), got float32 [2, 3]"),
    (chunk_message(mask=np.ones((2, 2), np.float32)), "bits", "mask must be float32 [2, 3] of 0s and 1s, got float32 [2, 2]"),
    (chunk_message(mask=np.full((2, 3), 0.5, np.float32)), "bits", "mask must be float32 [2, 3] of 0s and 1s, got float32 [2, 3]"),
    (chunk_message(labels=np.full((2, 3, 2), 2.0, np.float32)), "bits",
     "labels must be float32 [2, 3, 2] of 0s and 1s, got float32 [2, 3, 2]"),
    (chunk_message(labels=np.zeros((2, 3), np.int64)), "bits", "labels must be float32 [2, 3, 2] of 0s and 1s, got int64 [2, 3]"),
    (chunk_message(labels=np.full((2, 3), 2, np.int64), loss="cross_entropy"), "cross_entropy", "labels must lie in 0..1"),
    (chunk_message(loss="cross_entropy", labels=np.zeros((2, 3, 2), np.float32)), "cross_entropy",
     "labels must be int64 [2, 3], got float32 [2, 3, 2]"),
    (chunk_message(meta={"start": 1, "last": False}), "bits", "a chunk's meta needs bools 'start' and 'last', got 1 and False"),
    (chunk_message(x=np.full((2, 3, 4), np.nan, np.float32)), "bits", "x holds NaN or Inf values (policy: reject)"),
])
def test_an_unusable_chunk_is_refused_and_loses_its_batch(message, loss, text):
    error = refusal(check_batch, message, sequence(loss))
    assert str(error) == text
    assert error.lost is message


def test_a_chunk_without_its_mask_is_refused():
    message = chunk_message()
    del message.tensors["mask"]
    assert str(refusal(check_batch, message, sequence("bits"))) == \
        "FORWARD chunk needs tensors 'x', 'labels' and 'mask', got ['labels', 'x']"


def test_a_feed_forward_batch_of_the_bits_loss_takes_a_vector_of_bits_per_example():
    bits = assignment(num_classes=3, loss="bits")
    good = check_batch(batch_message(labels=np.eye(4, 3, dtype=np.float32)), bits)
    assert good.labels.shape == (4, 3) and good.mask is None and good.span == WHOLE
    message = batch_message(labels=np.arange(4, dtype=np.int64))
    error = refusal(check_batch, message, bits)
    assert str(error) == "labels must be float32 [4, 3] of 0s and 1s, got int64 [4]" and error.lost is message
