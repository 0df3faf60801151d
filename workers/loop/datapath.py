"""What one data message does to a configured stage: checked, then the actions of its step carried out.

The forward socket brings training batches (FORWARD) and evaluation batches (EVAL), a part per input edge (and the
labels from the coordinator, for a stage that uses them), gathered until the batch is whole
(`dni.workers.loop.gather`); the backward socket brings targets (BACKWARD), one per output edge. Each message is
checked (`dni.workers.loop.validation`), and one that comes along no edge of this stage is refused; then the stage
carries out the row of actions that its role, mode and the message call for (`dni.workers.loop.actions.step_order`),
the same for feed-forward and recurrent stages, chains and graphs.

A handler is a generator: it yields after every action that put a message a neighbour waits for, and the
worker's loop writes the outboxes before it resumes the handler, so no handler touches a socket. Refusals
(`Rejected`) and the stage's own failures propagate to the worker, which counts the one and reports the other
as fatal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from dni.protocol import Kind, Message, decode
from dni.workers.loop.actions import SENDS, Action, Event, Role, step_order
from dni.workers.stage.blocks import Outputs, Span
from dni.workers.stage.compute import EvalResult, LastStageResult, Upstream, score_meta
from dni.workers.loop.devices import arrays_on_host, to_device
from dni.workers.loop.pixels import as_floats
from dni.workers.loop.session import Session
from dni.workers.loop.gather import COORDINATOR, describe_edges
from dni.workers.loop.validation import Rejected, check_batch, check_fresh, check_kind, check_origin, check_target

__all__ = ["MAX_GATHERING", "Steps", "StepState", "check_edge", "count_nonfinite", "on_backward", "on_forward", "receive"]

Steps = Iterator[None]  # a handler: each yield lets the loop write what it has put so far


MAX_GATHERING = 4096  # batches whose parts are partly in: more means a peer sends parts of batches that never complete


@dataclass
class StepState:
    """One step as its actions carry it out: what came in (a batch's inputs in edge order, or a target and the output
    edge it came along), and what each action leaves for the next."""
    message: Message
    xs: tuple[torch.Tensor, ...] = ()
    labels: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    span: Span = Span()
    target: Optional[torch.Tensor] = None
    edge: int = 0
    output: Optional[Outputs] = None
    upstream: Upstream = None
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
    """A training or evaluation batch's part from a producing stage or the coordinator; the step once it is whole."""
    message = receive(session, frames)
    check_kind(message, "forward")
    gather = session.gather
    check_edge(message, gather.takes(message.sender), session, "input")
    check_fresh(message, session.compute.awaits_target(message.batch))
    if gather.has(message):
        raise Rejected(f"batch {message.batch}: a second part from {describe_edges(frozenset({message.sender}))} "
                       "(duplicate or replayed)")
    if len(gather.open) >= MAX_GATHERING:
        raise Rejected(f"{MAX_GATHERING} batches are partly in already; batch {message.batch} is refused", message)
    takes_x, takes_labels = gather.wants(message.sender)
    edge = session.config.inputs[gather.edge_of[message.sender]] if takes_x else None
    data = message.sender == COORDINATOR
    part = check_batch(message, session.config, x=takes_x, labels=takes_labels, shape=edge.shape if edge else None,
                       pixels=data and session.config.pixels is not None)
    count_nonfinite(session, part.nonfinite)
    session.timeline.lap("checks")
    batch = gather.add(message, part)
    if batch is None:
        return
    pixels = session.config.pixels
    xs = tuple(to_device(as_floats(x, pixels if peer == COORDINATOR else None), session.device)
               for x, peer in zip(batch.xs, gather.edge_of) if x is not None)
    state = StepState(batch.message, xs, _on(batch.labels, session.device), _on(batch.mask, session.device), batch.span)
    session.timeline.lap("to_device")
    yield from _run(session, state, Event.EVALUATION if message.kind is Kind.EVAL else Event.BATCH)


def on_backward(session: Session, frames: list) -> Steps:
    """A batch's target from the stage at the other end of one of this stage's output edges."""
    message = receive(session, frames)
    check_kind(message, "backward")
    edge = session.consumers.get(message.sender)
    check_edge(message, edge is not None, session, "output")
    assert edge is not None
    compute = session.compute
    expected = compute.expected_target_shape(message.batch, edge) if compute.awaits_target(message.batch, edge) else None
    checked = check_target(message, expected, session.config.nonfinite)
    count_nonfinite(session, checked.nonfinite)
    session.timeline.lap("checks")
    state = StepState(message, target=to_device(checked.target, session.device), edge=edge)
    session.timeline.lap("to_device")
    yield from _run(session, state, Event.TARGET)


def check_edge(message: Message, known: bool, session: Session, way: str) -> None:
    """A message must come along one of this stage's edges; one that does not loses nothing."""
    if not known:
        raise Rejected(f"{session.config.where} has no {way} edge from {describe_edges(frozenset({message.sender}))}")


def _on(array: Optional[np.ndarray], device: str) -> Optional[torch.Tensor]:
    return None if array is None else to_device(array, device)


def _run(session: Session, state: StepState, event: Event) -> Steps:
    for action in step_order(session.role, session.config.mode, event):
        _ACTIONS[action](session, state)
        if action in SENDS:
            yield


def _forward(session: Session, state: StepState) -> None:
    state.output = session.compute.forward(state.message.batch, state.xs, state.labels, state.span)


def _evaluate(session: Session, state: StepState) -> None:
    compute = session.compute
    if session.role is Role.LAST:
        state.result = compute.evaluate_last(state.xs, _labels(state), state.mask, state.span)
    else:
        state.output = compute.evaluate(state.xs, state.labels, state.span)


def _send_activation(session: Session, state: StepState) -> None:
    assert state.output is not None  # every stage but a head has one
    message, output = state.message, state.output
    if isinstance(output, tuple):  # one per edge
        for outbox, part in zip(session.outputs, output):
            session.send(outbox, message.kind, message.batch, message.meta, {"x": part})
    else:
        session.send(session.outputs, message.kind, message.batch, message.meta, {"x": output})


def _follow_synthesizer(session: Session, state: StepState) -> None:
    state.upstream = session.compute.follow_synthesizer(state.message.batch)


def _loss(session: Session, state: StepState) -> None:
    result: LastStageResult = session.compute.last_step(state.xs, _labels(state), state.mask, state.span)
    state.result, state.upstream = result, result.upstream


def _take_target(session: Session, state: StepState) -> None:
    assert state.target is not None
    state.upstream = session.compute.take_target(state.message.batch, state.target, state.edge)


def _send_input_gradient(session: Session, state: StepState) -> None:
    """Each input edge's part of dL/d(input) (or the loss prediction of sl) back to the stage that produced it."""
    upstream = state.upstream
    targets = upstream if isinstance(upstream, tuple) else (upstream,)
    for outbox, target in zip(session.inputs, targets):
        if outbox is not None and target is not None:
            session.send(outbox, Kind.BACKWARD, state.message.batch, {}, {"target": target})


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
