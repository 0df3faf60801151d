"""What one data message does to a configured stage: checked, computed, and its results put into outboxes.

The forward socket brings training batches (FORWARD) and evaluation batches
(EVAL); the backward socket brings targets (BACKWARD). A hidden stage sends
its activation downstream and, in the unlocked modes, updates at once; the
last stage computes the job's loss and reports to the coordinator. Whatever
must travel upstream (an input gradient, a synthetic loss target) goes to the
stage above.

Each handler is a generator: it yields whenever it has put a message that a
neighbour is waiting for, and the worker's loop writes the outboxes before it
resumes the handler. So an activation leaves before the stage's synthetic
update, and an input gradient before the optimiser step, without any handler
touching a socket. Refusals (`Rejected`) and the stage's own failures propagate
to the worker, which counts the one and reports the other as fatal.
"""
from __future__ import annotations

from typing import Iterator, Optional, Protocol, cast

import torch

from dni.pixels import checked_inputs
from dni.protocol import Kind, Message, decode
from dni.workers.compute import EvalResult, StageCompute, score_meta
from dni.workers.devices import arrays_on_host, to_device
from dni.workers.interface import Shape
from dni.workers.session import Session
from dni.workers.validation import check_fresh, check_kind, check_origin, check_target

__all__ = ["AwaitsTargets", "Steps", "count_nonfinite", "on_backward", "on_forward", "receive", "send_upstream"]

Steps = Iterator[None]  # a handler: each yield lets the loop write what it has put so far


def receive(session: Session, frames: list) -> Message:
    """Decode a data message and check it is this job's, for a stage that has not failed."""
    message = decode(frames, session.limits)
    session.timeline.lap("decode")
    session.messages[_RECEIVED[message.kind]] += 1
    check_origin(message, session.config.job, session.failure)
    session.handled += 1
    return message


class AwaitsTargets(Protocol):
    """A stage that keeps batches until their targets come back: a feed-forward or a recurrent stage."""

    def awaits_target(self, batch: int) -> bool: ...

    def expected_target_shape(self, batch: int) -> Shape: ...

    def take_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]: ...

    def apply_update(self) -> None: ...


def on_forward(session: Session, frames: list) -> Steps:
    """A training or evaluation batch from upstream (or the coordinator, for the first stage)."""
    message = receive(session, frames)
    check_kind(message, "forward")
    compute, config = cast(StageCompute, session.compute), session.config
    check_fresh(message, compute.awaits_target(message.batch))
    inputs = checked_inputs(message, config)
    count_nonfinite(session, inputs.nonfinite)
    session.timeline.lap("checks")
    x, labels = to_device(inputs.x, session.device), to_device(inputs.labels, session.device)
    session.timeline.lap("to_device")
    if message.kind is Kind.EVAL:
        _evaluate(session, message, x, labels)
        return
    if config.is_last:
        result = compute.last_step(x, labels)
        send_upstream(session, message.batch, result.upstream)
        yield  # the target first: the stage above waits for it, the coordinator only counts the result
        _report(session, Kind.TRAIN_RESULT, message.batch, {}, result)
        yield
        compute.apply_update()
        return
    h = compute.forward(message.batch, x, labels)
    assert session.downstream is not None  # every stage but the last has one
    session.send(session.downstream, Kind.FORWARD, message.batch, message.meta, {"x": h, "labels": labels})
    yield
    send_upstream(session, message.batch, compute.follow_synthesizer(message.batch))
    yield
    compute.apply_update()


def _evaluate(session: Session, message: Message, x: torch.Tensor, labels: torch.Tensor) -> None:
    compute = cast(StageCompute, session.compute)
    if not session.config.is_last:
        output = compute.evaluate(x, labels)
        assert session.downstream is not None
        session.send(session.downstream, Kind.EVAL, message.batch, message.meta, {"x": output, "labels": labels})
        return
    _report(session, Kind.EVAL_RESULT, message.batch, message.meta, compute.evaluate_last(x, labels))


def _report(session: Session, kind: Kind, batch: int, meta: dict, result: EvalResult) -> None:
    """The last stage's score of a batch, to the coordinator."""
    score = arrays_on_host({"score": result.score})["score"]
    session.timeline.lap("to_host")
    session.check_finite_output("loss", score, batch)
    session.send(session.report, kind, batch, {**meta, **score_meta(score, result.count)})


def on_backward(session: Session, frames: list) -> Steps:
    """A batch's target from downstream."""
    message = receive(session, frames)
    check_kind(message, "backward")
    compute = cast(AwaitsTargets, session.compute)
    expected = compute.expected_target_shape(message.batch) if compute.awaits_target(message.batch) else None
    checked = check_target(message, expected, session.config.nonfinite)
    count_nonfinite(session, checked.nonfinite)
    session.timeline.lap("checks")
    target = to_device(checked.target, session.device)
    session.timeline.lap("to_device")
    send_upstream(session, message.batch, compute.take_target(message.batch, target))
    yield
    compute.apply_update()


def send_upstream(session: Session, batch: int, target: Optional[torch.Tensor]) -> None:
    if target is not None and session.upstream is not None:
        session.send(session.upstream, Kind.BACKWARD, batch, {}, {"target": target})


def count_nonfinite(session: Session, accepted: int) -> None:
    if accepted:  # only when it happens, so the metrics list no empty counter
        session.messages["nonfinite_accepted"] += accepted


_RECEIVED = {kind: f"received_{kind.name.lower()}" for kind in Kind}
