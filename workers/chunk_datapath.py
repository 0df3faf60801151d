"""What one data message does to a stage of a sequence job: a chunk checked, computed, its results put into outboxes.

The sequence-job twin of `dni.workers.datapath`, with the same yields (an activation leaves before the stage's
synthetic update, the readout's input gradient before its result): a recurrent stage runs the chunk from its
kept state and sends its outputs downstream with the chunk's targets, mask and flags; the readout scores the
chunk and reports (bits summed over its scored steps, steps right, steps scored) to the coordinator. Targets
coming back take the feed-forward path (`datapath.on_backward`): only the stage's arithmetic differs.
"""
from __future__ import annotations

from typing import cast

import torch

from dni.protocol import Kind, Message
from dni.workers.datapath import Steps, count_nonfinite, receive, send_upstream
from dni.workers.devices import arrays_on_host, to_device
from dni.workers.sequence_stage import ChunkResult, ReadoutStage, RecurrentStage
from dni.workers.session import Session
from dni.workers.validation import check_chunk, check_fresh, check_kind

__all__ = ["on_forward"]


def on_forward(session: Session, frames: list) -> Steps:
    """A training or evaluation chunk from upstream (or the coordinator, for the first stage)."""
    message = receive(session, frames)
    check_kind(message, "forward")
    config = session.config
    check_fresh(message, session.compute.awaits_target(message.batch))
    chunk = check_chunk(message, config.input_shape, config.truncation, config.loss, config.num_classes, config.nonfinite)
    count_nonfinite(session, chunk.nonfinite)
    session.timeline.lap("checks")
    scored_here = config.is_last  # a recurrent stage only passes the targets and mask on: they stay on the host
    x = to_device(chunk.x, session.device)
    labels, mask = (to_device(array, session.device if scored_here else "cpu") for array in (chunk.labels, chunk.mask))
    session.timeline.lap("to_device")
    if scored_here:
        readout = cast(ReadoutStage, session.compute)
        if message.kind is Kind.EVAL:
            _report(session, Kind.EVAL_RESULT, message, readout.evaluate_last(x, labels, mask))
            return
        result = readout.last_step(x, labels, mask)
        send_upstream(session, message.batch, result.upstream)
        yield  # the target first: the stage above waits for it, the coordinator only counts the result
        _report(session, Kind.TRAIN_RESULT, message, result)
        yield
        readout.apply_update()
        return
    recurrent = cast(RecurrentStage, session.compute)
    assert session.downstream is not None  # every stage but the last has one
    if message.kind is Kind.EVAL:
        outputs = recurrent.evaluate(x, start=chunk.start)
        session.send(session.downstream, Kind.EVAL, message.batch, message.meta, _onward(outputs, labels, mask))
        return
    outputs = recurrent.forward(message.batch, x, start=chunk.start, last=chunk.last)
    session.send(session.downstream, Kind.FORWARD, message.batch, message.meta, _onward(outputs, labels, mask))
    yield
    send_upstream(session, message.batch, recurrent.follow_synthesizer(message.batch))


def _onward(outputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": outputs, "labels": labels, "mask": mask}


def _report(session: Session, kind: Kind, message: Message, result: ChunkResult) -> None:
    """The readout's score of a chunk, to the coordinator, with the chunk's flags (and evaluation) echoed."""
    score = arrays_on_host({"score": result.score})["score"]
    session.timeline.lap("to_host")
    session.check_finite_output("loss", score, message.batch)
    meta = {**message.meta, "loss_sum": float(score[0]), "correct": int(score[1]), "count": int(score[2])}
    session.send(session.report, kind, message.batch, meta)
