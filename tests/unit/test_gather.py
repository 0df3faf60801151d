"""workers/loop/gather.py: a batch's parts, from the edges that bring them, handed over once all are in."""
from __future__ import annotations

import numpy as np
import pytest

from dni.protocol import Kind, Message
from dni.spec import Edge, Mode, OptimizerSpec, StageAssignment, StageSpec
from dni.workers.loop.gather import Gather
from dni.workers.loop.validation import Batch, Rejected
from dni.workers.stage.blocks import WHOLE

HEAD = StageAssignment(job="j", index=2, num_stages=3, spec=StageSpec("linear", {"features": 3}), mode=Mode.SG,
                       input_shape=(6,), num_classes=3, optimizer=OptimizerSpec(), seed=0, window=1, threads=1,
                       coordinator="ipc://c", inputs=(Edge("left", 0, "ipc://l", (2,)), Edge("right", 1, "ipc://r", (4,))))


def part(sender: int, batch: int = 5, kind: Kind = Kind.FORWARD, examples: int = 2) -> tuple[Message, Batch]:
    x = np.full((examples, 2 + 2 * sender), sender, np.float32) if sender >= 0 else None
    labels = np.zeros(examples, np.int64) if sender < 0 else None
    return Message(kind, "j", batch, 0, sender, {"from": sender}), Batch(x, labels, None, WHOLE, 0, (examples,))


def test_a_batch_is_whole_once_every_edge_and_the_labels_are_in_whatever_their_order():
    gather = Gather(HEAD, takes_labels=True)
    assert gather.expected == {0, 1, -1} and gather.wants(0) == (True, False) and gather.wants(-1) == (False, True)
    assert gather.add(*part(1)) is None and gather.add(*part(-1)) is None
    assert gather.has(part(1)[0]) and not gather.has(part(0)[0])
    whole = gather.add(*part(0))
    assert [x[0, 0] for x in whole.xs] == [0.0, 1.0], "in the order of the stage's edges"
    assert whole.labels is not None and whole.message.meta == {"from": -1}, "the coordinator's metadata is echoed"
    assert not gather.open


def test_training_and_evaluation_batches_of_one_number_are_gathered_apart():
    gather = Gather(HEAD, takes_labels=False)
    gather.add(*part(0, kind=Kind.FORWARD))
    assert gather.add(*part(1, kind=Kind.EVAL)) is None and len(gather.open) == 2
    assert gather.add(*part(1, kind=Kind.FORWARD)).message.kind is Kind.FORWARD


def test_a_part_whose_examples_disagree_with_those_in_loses_its_batch():
    gather = Gather(HEAD, takes_labels=False)
    gather.add(*part(0))
    message, batch = part(1, examples=3)
    with pytest.raises(Rejected, match=r"batch 5: the part from stage 1 has examples \[3\], the parts before it \[2\]") as refused:
        gather.add(message, batch)
    assert refused.value.lost is message


def test_a_stage_of_one_part_gets_its_batch_at_once_and_keeps_nothing():
    single = StageAssignment(**{**vars(HEAD), "inputs": (Edge("left", 0, "ipc://l", (6,)),)})
    gather = Gather(single, takes_labels=False)
    assert gather.add(*part(0)) is not None and not gather.open and not gather.takes(-1)
