"""workers/loop/datapath.py: one data message through a real Session, its stage and its outboxes, without a process.

Each session's outboxes wrap a socket that only records the frames it is given; the handler is driven as the
worker's loop drives it (write the outboxes at each yield), so the tests see what left, and when. Tiny stages:
8 inputs, 4 hidden units, 3 classes, a batch of four; chunks of three steps of 3 features for the sequence path.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Optional

import numpy as np
import pytest
import torch

from dni.protocol import DEFAULT_LIMITS, Kind, Message, Outbox, Outboxes, decode, encode
from dni.protocol.refusals import RefusalLog
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec, SynthesizerSpec
from dni.workers.loop import datapath
from dni.workers.build.builder import assigned_stage
from dni.workers.loop.session import Links, Session
from dni.workers.stage.timing import Timeline
from dni.workers.loop.validation import Rejected
from dni.testing import chain_edges

JOB = "unit"
BATCH, FEATURES, HIDDEN, CLASSES = 4, 8, 4, 3
STEPS, BITS = 3, 2


class FakeSocket:
    """A socket that takes every message and records its frames."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True) -> None:
        self.sent.append([bytes(frame) for frame in frames])

    def close(self) -> None:
        pass

    def messages(self) -> list[Message]:
        return [decode(frames) for frames in self.sent]


def config(index: int, mode: Mode = Mode.SG, *, num_stages: int = 3, truncation: int = 0) -> StageAssignment:
    """Stage `index` of a small feed-forward job, or (with `truncation`) of a sequence job of bits per step."""
    last = index == num_stages - 1
    if truncation:
        kind, params = ("linear", {"features": BITS}) if last else ("lstm", {"hidden": HIDDEN})
        input_shape, classes, loss = ((HIDDEN,) if index else (STEPS,)), BITS, "bits"
    else:
        kind, params = ("linear", {"features": CLASSES}) if last else ("linear_bn_relu", {"features": HIDDEN})
        input_shape, classes, loss = ((HIDDEN,) if index else (FEATURES,)), CLASSES, "cross_entropy"
    return StageAssignment(job=JOB, index=index, num_stages=num_stages, mode=mode, input_shape=input_shape,
                           spec=StageSpec(kind, params, SynthesizerSpec("mlp", {"hidden": 8, "layers": 1})),
                           num_classes=classes, optimizer=OptimizerSpec("sgd", 0.1), seed=0, window=1, threads=1,
                           coordinator="inproc://c", **chain_edges(index, input_shape, None if index == 0 else "inproc://u",
                                                                    None if last else "inproc://d"), loss=loss, truncation=truncation)


class Wired:
    """A session and the sockets behind its outboxes."""

    def __init__(self, assignment: StageAssignment) -> None:
        self.upstream = FakeSocket() if not assignment.is_first else None
        self.downstream = FakeSocket() if not assignment.is_last else None
        self.report = FakeSocket()
        outboxes = Outboxes()
        links = Links(outboxes,
                      (outboxes.add(Outbox(self.upstream, name="upstream")) if self.upstream else None,),
                      (outboxes.add(Outbox(self.downstream, name="downstream")),) if self.downstream else (),
                      outboxes.add(Outbox(self.report, name="coordinator")), self.report)
        timeline = Timeline()
        compute, modules = assigned_stage(assignment, "cpu", timeline)
        self.session = Session(assignment, compute, modules.output_shape, links, device="cpu", timeline=timeline,
                               limits=DEFAULT_LIMITS, refusals=RefusalLog(logging.getLogger("test_datapath")))

    def sockets(self) -> dict[str, int]:
        """How many messages each socket has taken so far."""
        sockets = {"upstream": self.upstream, "downstream": self.downstream, "report": self.report}
        return {name: len(socket.sent) for name, socket in sockets.items() if socket is not None}

    def run(self, handler, frames: list) -> list[dict[str, int]]:
        """The handler as the worker's loop runs it: the outboxes written at each yield; what had left by each."""
        seen = []
        for _ in handler(self.session, frames):
            self.session.write()
            seen.append(self.sockets())
        return seen

    def feed(self, batch: list) -> list[dict[str, int]]:
        """A batch as the stage takes it, part by part (`batch_frames` made them all): what had left at each yield."""
        config, seen = self.session.config, []
        x_from = -1 if config.is_first else config.index - 1
        for frames in batch:
            sender = decode(frames).sender
            if (sender == x_from) or (sender == -1 and self.session.takes_labels):
                seen += self.run(datapath.on_forward, frames)
        return seen


def x_of(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def batch_frames(kind: Kind = Kind.FORWARD, batch: int = 7, x: Optional[np.ndarray] = None,
                 labels: Optional[np.ndarray] = None, meta: Optional[dict] = None, sender: int = -1,
                 **tensors: np.ndarray) -> list:
    """One message: a batch from the coordinator (x and labels), or a part of one from `sender`'s stage."""
    x = x_of(0, BATCH, FEATURES) if x is None else x
    labels = np.array([0, 1, 2, 1], np.int64) if labels is None else labels
    arrays = {"x": x, "labels": labels, **tensors} if sender < 0 else {"x": x}
    return encode(Message(kind, JOB, batch, 0, sender, meta or {"tag": "m"}, arrays))


def parts(kind: Kind = Kind.FORWARD, batch: int = 7, x: Optional[np.ndarray] = None,
          labels: Optional[np.ndarray] = None, meta: Optional[dict] = None, **tensors: np.ndarray) -> list[list]:
    """Every part a stage of the chain may take of a batch: the activation from the stage before (sender 1 or 0), the
    data and labels from the coordinator; `Wired.feed` picks the ones its stage takes."""
    return [batch_frames(kind, batch, x, labels, meta, sender, **tensors) for sender in (0, 1, -1)]


def target_frames(target: np.ndarray, batch: int = 7, sender: int = 2) -> list:
    return encode(Message(Kind.BACKWARD, JOB, batch, 0, sender, {}, {"target": target}))


def weights(wired: Wired) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in wired.session.compute.module.parameters()]


def test_a_hidden_sg_stage_sends_the_activation_at_its_first_yield_and_the_input_gradient_at_the_next():
    wired = Wired(config(1, Mode.SG))
    with torch.no_grad():  # a synthesizer that predicts something (it starts at zero), so that following it moves
        wired.session.compute.synthesizer.output.weight.normal_(generator=torch.Generator().manual_seed(3))
    before = weights(wired)
    seen = wired.feed(parts(x=x_of(0, BATCH, HIDDEN)))
    assert seen == [{"upstream": 0, "downstream": 1, "report": 0}, {"upstream": 1, "downstream": 1, "report": 0}]
    (activation,) = wired.downstream.messages()
    assert activation.kind is Kind.FORWARD and activation.batch == 7 and activation.meta == {"tag": "m"}
    assert list(activation.tensors) == ["x"] and activation.tensors["x"].shape == (BATCH, HIDDEN), \
        "the labels go straight from the coordinator to the stages that use them"
    (gradient,) = wired.upstream.messages()
    assert gradient.kind is Kind.BACKWARD and gradient.batch == 7 and gradient.tensors["target"].shape == (BATCH, HIDDEN)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(wired))), "the unlocked stage stepped at once"
    assert wired.session.compute.awaits_target(7)

    synthesizer = [p.detach().clone() for p in wired.session.compute.synthesizer.parameters()]
    assert wired.run(datapath.on_backward, target_frames(np.ones((BATCH, HIDDEN), np.float32))) == []
    assert not wired.session.compute.in_flight and wired.sockets() == {"upstream": 1, "downstream": 1, "report": 0}
    assert any(not torch.equal(a, b.detach()) for a, b in zip(synthesizer, wired.session.compute.synthesizer.parameters()))


def test_a_locked_hidden_stage_sends_its_input_gradient_before_it_steps():
    wired = Wired(config(1, Mode.BACKPROP))
    assert wired.feed(parts(x=x_of(0, BATCH, HIDDEN))) == [{"upstream": 0, "downstream": 1, "report": 0}]
    before = weights(wired)
    steps = datapath.on_backward(wired.session, target_frames(x_of(1, BATCH, HIDDEN)))
    next(steps)  # up to the input gradient's send: not stepped yet
    assert all(torch.equal(a, b) for a, b in zip(before, weights(wired)))
    wired.session.write()
    assert len(wired.upstream.sent) == 1
    with pytest.raises(StopIteration):
        next(steps)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(wired)))


def test_the_last_stage_sends_the_target_upstream_before_its_result():
    wired = Wired(config(2, Mode.SG))
    seen = wired.feed(parts(x=x_of(0, BATCH, HIDDEN)))
    assert seen == [{"upstream": 1, "report": 0}, {"upstream": 1, "report": 1}]
    (result,) = wired.report.messages()
    assert result.kind is Kind.TRAIN_RESULT and result.batch == 7
    assert result.meta["tag"] == "m" and result.meta["count"] == BATCH and 0 <= result.meta["correct"] <= BATCH
    assert result.meta["loss_sum"] > 0
    assert wired.upstream.messages()[0].tensors["target"].shape == (BATCH, HIDDEN)


def test_the_last_stage_reports_an_evaluation_batch_and_sends_nothing_upstream():
    wired = Wired(config(2, Mode.SG))
    before = weights(wired)
    assert wired.feed(parts(Kind.EVAL, x=x_of(0, BATCH, HIDDEN))) == [{"upstream": 0, "report": 1}]
    (result,) = wired.report.messages()
    assert result.kind is Kind.EVAL_RESULT and result.meta["count"] == BATCH
    assert all(torch.equal(a, b) for a, b in zip(before, weights(wired))), "evaluation never trains"


def test_a_bad_batch_is_rejected_with_its_message_lost_and_nothing_sent():
    wired = Wired(config(2, Mode.SG))
    wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN), sender=1))
    with pytest.raises(Rejected, match=r"labels must be int64 \[4\], got int32 \[4\]") as caught:
        wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN), labels=np.array([0, 1, 2, 1], np.int32)))
    assert caught.value.lost is not None and caught.value.lost.batch == 7
    assert wired.sockets() == {"upstream": 0, "report": 0} and not wired.session.compute.in_flight


def test_a_part_along_no_edge_of_the_stage_is_refused_losing_nothing():
    wired = Wired(config(1, Mode.SG))
    with pytest.raises(Rejected, match=r"stage 1 has no input edge from stage 2") as caught:
        wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN), sender=2))
    assert caught.value.lost is None
    with pytest.raises(Rejected, match=r"stage 1 has no input edge from the coordinator"):
        wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN)))
    with pytest.raises(Rejected, match=r"stage 1 has no output edge from stage 0"):
        wired.run(datapath.on_backward, encode(Message(Kind.BACKWARD, JOB, 7, 0, 0, {}, {"target": x_of(1, BATCH, HIDDEN)})))
    assert wired.sockets() == {"upstream": 0, "downstream": 0, "report": 0}


def test_the_last_stage_goes_on_only_once_both_parts_are_in_whichever_comes_first():
    wired = Wired(config(2, Mode.SG))
    assert wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN))) == [], "the labels alone"
    with pytest.raises(Rejected, match=r"batch 7: a second part from the coordinator \(duplicate or replayed\)"):
        wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN)))
    assert wired.run(datapath.on_forward, batch_frames(x=x_of(0, BATCH, HIDDEN), sender=1)) == [
        {"upstream": 1, "report": 0}, {"upstream": 1, "report": 1}]
    assert wired.report.messages()[0].meta["tag"] == "m" and not wired.session.gather.open


def test_a_target_no_batch_awaits_is_rejected_losing_nothing():
    wired = Wired(config(1, Mode.SG))
    with pytest.raises(Rejected, match="no batch 7 awaits a target") as caught:
        wired.run(datapath.on_backward, target_frames(np.ones((BATCH, HIDDEN), np.float32)))
    assert caught.value.lost is None


def chunk_frames(kind: Kind, x: np.ndarray, mask: np.ndarray, start: bool, last: bool, batch: int = 7) -> list[list]:
    labels = (x_of(5, BATCH, STEPS, BITS) > 0).astype(np.float32)
    return parts(kind, batch, x, labels, {"start": start, "last": last}, mask=mask)


def test_the_sequence_path_passes_only_its_output_on_and_keeps_the_state_across_chunks():
    wired = Wired(config(0, Mode.SG, num_stages=2, truncation=STEPS))
    mask = np.array([[0, 1, 1]] * BATCH, np.float32)
    x = x_of(3, BATCH, STEPS, STEPS)
    seen = wired.feed(chunk_frames(Kind.FORWARD, x, mask, start=True, last=False))
    assert seen == [{"downstream": 1, "report": 0}] * 2, "the activation first; a first stage has nothing upstream"
    (activation,) = wired.downstream.messages()
    assert activation.meta == {"start": True, "last": False}
    assert list(activation.tensors) == ["x"] and activation.tensors["x"].shape == (BATCH, STEPS, HIDDEN)
    kept = wired.session.compute.block.state
    assert kept is not None and kept[0].shape == (BATCH, HIDDEN)

    wired.run(datapath.on_backward, target_frames(x_of(4, BATCH, STEPS, HIDDEN), sender=1))
    core = copy.deepcopy(wired.session.compute.module)  # the weights the next chunk runs with
    with torch.no_grad():
        expected, _ = core(torch.from_numpy(x), kept)
        fresh, _ = core(torch.from_numpy(x), core.initial_state(BATCH, torch.device("cpu")))
    assert not torch.allclose(expected, fresh, atol=1e-4), "the kept state matters"
    wired.feed(chunk_frames(Kind.FORWARD, x, mask, start=False, last=True, batch=8))
    second = wired.downstream.messages()[1]
    assert second.batch == 8 and second.meta == {"start": False, "last": True}
    np.testing.assert_allclose(second.tensors["x"], expected.numpy(), rtol=1e-5, atol=1e-6)  # from the kept state


def test_the_sequence_readout_scores_the_masked_steps():
    wired = Wired(config(1, Mode.SG, num_stages=2, truncation=STEPS))
    mask = np.array([[0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], np.float32)
    seen = wired.feed(chunk_frames(Kind.FORWARD, x_of(3, BATCH, STEPS, HIDDEN), mask, True, True))
    assert seen == [{"upstream": 1, "report": 0}, {"upstream": 1, "report": 1}]
    (result,) = wired.report.messages()
    assert result.meta["count"] == int(mask.sum()) and result.meta["start"] is True
    target = wired.upstream.messages()[0].tensors["target"]
    assert target.shape == (BATCH, STEPS, HIDDEN) and not target[mask == 0].any(), "an unscored step sends no gradient"
