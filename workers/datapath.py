"""What one data message does to a configured stage: checked, computed, and its results sent on.

The forward socket brings training batches (FORWARD) and evaluation batches
(EVAL); the backward socket brings targets (BACKWARD). A hidden stage sends
its activation downstream and, in the unlocked modes, updates at once; the
last stage computes the job's loss and reports to the coordinator. Whatever
must travel upstream (an input gradient, a synthetic loss target) goes to the
stage above. Refusals (`Rejected`) and the stage's own failures propagate to
the worker, which counts the one and reports the other as fatal.
"""
from __future__ import annotations

from typing import Optional

import torch

from dni.protocol import Kind, Message, decode
from dni.workers.devices import to_device
from dni.workers.session import Session
from dni.workers.validation import check_fresh, check_inputs, check_kind, check_origin, check_target

__all__ = ["on_backward", "on_forward", "receive"]


def receive(session: Session, frames: list) -> Message:
    """Decode a data message and check it is this job's, for a stage that has not failed."""
    with session.timeline("transport"):
        message = decode(frames, session.limits)
    session.messages[f"received_{message.kind.name.lower()}"] += 1
    check_origin(message, session.config.job, session.failure)
    session.handled += 1
    return message


def on_forward(session: Session, frames: list) -> None:
    """A training or evaluation batch from upstream (or the coordinator, for the first stage)."""
    message = receive(session, frames)
    check_kind(message, "forward")
    compute, config = session.compute, session.config
    check_fresh(message, compute.awaits_target(message.batch))
    with session.timeline("transport"):
        inputs = check_inputs(message, config.input_shape, config.num_classes, config.nonfinite)
        _count_nonfinite(session, inputs.nonfinite)
        x, labels = to_device(inputs.x, session.device), to_device(inputs.labels, session.device)
    if message.kind is Kind.EVAL:
        return _evaluate(session, message, x, labels)
    if config.is_last:
        result = compute.train_last(x, labels)
        session.check_finite_output("loss", result.loss_sum, message.batch)
        session.send(session.report, Kind.TRAIN_RESULT, message.batch, result.as_meta())
        return _send_upstream(session, message.batch, result.upstream)
    h = compute.forward(message.batch, x, labels)
    session.send(session.downstream, Kind.FORWARD, message.batch, message.meta, {"x": h, "labels": labels})
    _send_upstream(session, message.batch, compute.update_after_forward(message.batch))


def _evaluate(session: Session, message: Message, x: torch.Tensor, labels: torch.Tensor) -> None:
    if not session.config.is_last:
        output = session.compute.evaluate(x, labels)
        session.send(session.downstream, Kind.EVAL, message.batch, message.meta, {"x": output, "labels": labels})
        return
    result = session.compute.evaluate_last(x, labels)
    session.check_finite_output("loss", result.loss_sum, message.batch)
    session.send(session.report, Kind.EVAL_RESULT, message.batch, {**message.meta, **result.as_meta()})


def on_backward(session: Session, frames: list) -> bool:
    """A batch's target from downstream; True when no batch awaits a target any more (flush waiters may go)."""
    message = receive(session, frames)
    check_kind(message, "backward")
    compute = session.compute
    expected = compute.expected_target_shape(message.batch) if compute.awaits_target(message.batch) else None
    checked = check_target(message, expected, session.config.nonfinite)
    _count_nonfinite(session, checked.nonfinite)
    with session.timeline("transport"):
        target = to_device(checked.target, session.device)
    _send_upstream(session, message.batch, compute.receive_target(message.batch, target))
    return compute.in_flight == 0


def _send_upstream(session: Session, batch: int, target: Optional[torch.Tensor]) -> None:
    if target is not None and session.upstream is not None:
        session.send(session.upstream, Kind.BACKWARD, batch, tensors={"target": target})


def _count_nonfinite(session: Session, accepted: int) -> None:
    if accepted:  # only when it happens, so the metrics list no empty counter
        session.messages["nonfinite_accepted"] += accepted
