"""What one data message does to a configured stage: checked, then the actions of its step carried out.

The forward socket brings training batches (FORWARD) and evaluation batches (EVAL); the backward socket brings
targets (BACKWARD). Each is checked (`dni.workers.loop.validation`), then the stage carries out the row of actions
that its role, mode and the message call for (`dni.workers.loop.actions.step_order`), the same for feed-forward and
recurrent stages.

A handler is a generator: it yields after every action that put a message a neighbour waits for, and the
worker's loop writes the outboxes before it resumes the handler, so no handler touches a socket. Refusals
(`Rejected`) and the stage's own failures propagate to the worker, which counts the one and reports the other
as fatal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from dni.protocol import Kind, Message, decode
from dni.workers.loop.actions import SENDS, Action, Event, Role, step_order
from dni.workers.stage.blocks import Span
from dni.workers.stage.compute import EvalResult, LastStageResult, score_meta
from dni.workers.loop.devices import arrays_on_host, to_device
from dni.workers.loop.pixels import as_floats
from dni.workers.loop.session import Session
from dni.workers.loop.validation import check_batch, check_fresh, check_kind, check_origin, check_target

__all__ = ["Steps", "StepState", "count_nonfinite", "on_backward", "on_forward", "receive"]

Steps = Iterator[None]  # a handler: each yield lets the loop write what it has put so far


@dataclass
class StepState:
    """One message's step as its actions carry it out: what came in, and what each action leaves for the next."""
    message: Message
    x: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    span: Span = Span()
    target: Optional[torch.Tensor] = None
    output: Optional[torch.Tensor] = None
    upstream: Optional[torch.Tensor] = None
    result: Optional[EvalResult] = None


def receive(session: Session, frames: list) -> Message:
    """Decode a data message and check it is this job's, for a stage that has not failed."""
    message = decode(frames, session.limits)
    session.timeline.lap("decode")
    session.messages[_RECEIVED[message.kind]] += 1
    check_origin(message, session.config.job, session.failure)
    session.handled += 1
    return message


def on_forward(session: Session, frames: list) -> Steps:
    """A training or evaluation batch from upstream (or the coordinator, for the first stage)."""
    message = receive(session, frames)
    check_kind(message, "forward")
    check_fresh(message, session.compute.awaits_target(message.batch))
    batch = check_batch(message, session.config)
    count_nonfinite(session, batch.nonfinite)
    session.timeline.lap("checks")
    mask = None if batch.mask is None else to_device(batch.mask, session.labels_device)
    x = to_device(as_floats(batch.x, session.config.pixels), session.device)
    state = StepState(message, x, to_device(batch.labels, session.labels_device),
                      mask, batch.span)
    session.timeline.lap("to_device")
    yield from _run(session, state, Event.EVALUATION if message.kind is Kind.EVAL else Event.BATCH)


def on_backward(session: Session, frames: list) -> Steps:
    """A batch's target from downstream."""
    message = receive(session, frames)
    check_kind(message, "backward")
    compute = session.compute
    expected = compute.expected_target_shape(message.batch) if compute.awaits_target(message.batch) else None
    checked = check_target(message, expected, session.config.nonfinite)
    count_nonfinite(session, checked.nonfinite)
    session.timeline.lap("checks")
    state = StepState(message, target=to_device(checked.target, session.device))
    session.timeline.lap("to_device")
    yield from _run(session, state, Event.TARGET)


def _run(session: Session, state: StepState, event: Event) -> Steps:
    for action in step_order(session.role, session.config.mode, event):
        _ACTIONS[action](session, state)
        if action in SENDS:
            yield


def _forward(session: Session, state: StepState) -> None:
    state.output = session.compute.forward(state.message.batch, _x(state), state.labels, state.span)


def _evaluate(session: Session, state: StepState) -> None:
    compute, x = session.compute, _x(state)
    if session.role is Role.LAST:
        state.result = compute.evaluate_last(x, _labels(state), state.mask, state.span)
    else:
        state.output = compute.evaluate(x, state.labels, state.span)


def _send_activation(session: Session, state: StepState) -> None:
    assert session.downstream is not None and state.output is not None  # every stage but the last has one
    onward = {"x": state.output, "labels": _labels(state)}
    if state.mask is not None:
        onward["mask"] = state.mask
    message = state.message
    session.send(session.downstream, message.kind, message.batch, message.meta, onward)


def _follow_synthesizer(session: Session, state: StepState) -> None:
    state.upstream = session.compute.follow_synthesizer(state.message.batch)


def _loss(session: Session, state: StepState) -> None:
    result: LastStageResult = session.compute.last_step(_x(state), _labels(state), state.mask, state.span)
    state.result, state.upstream = result, result.upstream


def _take_target(session: Session, state: StepState) -> None:
    assert state.target is not None
    state.upstream = session.compute.take_target(state.message.batch, state.target)


def _send_input_gradient(session: Session, state: StepState) -> None:
    if state.upstream is not None and session.upstream is not None:
        session.send(session.upstream, Kind.BACKWARD, state.message.batch, {}, {"target": state.upstream})


def _report(session: Session, state: StepState) -> None:
    """The last stage's score of a batch, to the coordinator, with the batch's metadata echoed."""
    assert state.result is not None
    message, result = state.message, state.result
    score = arrays_on_host({"score": result.score})["score"]
    session.timeline.lap("to_host")
    session.check_finite_output("loss", score, message.batch)
    kind = Kind.EVAL_RESULT if message.kind is Kind.EVAL else Kind.TRAIN_RESULT
    session.send(session.report, kind, message.batch, {**message.meta, **score_meta(score, result.count)})


def _step(session: Session, state: StepState) -> None:
    session.compute.apply_update()


def _x(state: StepState) -> torch.Tensor:
    assert state.x is not None
    return state.x


def _labels(state: StepState) -> torch.Tensor:
    assert state.labels is not None
    return state.labels


def count_nonfinite(session: Session, accepted: int) -> None:
    if accepted:  # only when it happens, so the metrics list no empty counter
        session.messages["nonfinite_accepted"] += accepted


_ACTIONS: dict[Action, Callable[[Session, StepState], None]] = {
    Action.FORWARD: _forward, Action.SEND_ACTIVATION: _send_activation, Action.FOLLOW_SYNTHESIZER: _follow_synthesizer,
    Action.LOSS: _loss, Action.TAKE_TARGET: _take_target, Action.SEND_INPUT_GRADIENT: _send_input_gradient,
    Action.REPORT: _report, Action.STEP: _step, Action.EVALUATE: _evaluate,
}
_RECEIVED = {kind: f"received_{kind.name.lower()}" for kind in Kind}
