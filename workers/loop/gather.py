"""A batch's parts gathered from the edges that bring them, until the stage has all it takes.

A stage of a graph takes a batch from every input edge (a producing stage's activation, or the data from the
coordinator) and, where it uses them, the labels straight from the coordinator; each part is a message of its own,
arriving in any order, interleaved with other batches' parts. The gather holds a batch's parts, keyed by its kind
and number (an evaluation's numbers are its own), and hands the batch over once the last part is in. A chain's
stage that takes one part (most of them) gets its batch at once.

A part from a sender the stage has no edge from, or a second part from one sender, is refused and loses nothing;
a part whose examples disagree with the parts already in loses its batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from dni.protocol import Kind, Message
from dni.spec import StageAssignment
from dni.workers.loop.validation import Batch, Rejected
from dni.workers.stage.blocks import Span

__all__ = ["COORDINATOR", "Gather", "Gathered", "describe_edges"]

COORDINATOR = -1  # the sender of data and labels


@dataclass
class Gathered:
    """A batch whose parts are in: each input edge's `x` in edge order, the labels (and mask) if the stage takes
    them, the message its metadata is echoed from, and how many of its arrays held NaN/Inf accepted."""
    message: Message
    xs: list[Optional[np.ndarray]]
    labels: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    span: Span = Span()
    nonfinite: int = 0
    lead: tuple[int, ...] = ()
    missing: set[int] = field(default_factory=set)


class Gather:
    """The parts of the batches under way at one stage (see the module docstring)."""

    def __init__(self, config: StageAssignment, takes_labels: bool) -> None:
        self.edge_of = {edge.peer: index for index, edge in enumerate(config.inputs)}
        self.expected = frozenset({*self.edge_of, *((COORDINATOR,) if takes_labels else ())})
        self.takes_labels = takes_labels
        self.open: dict[tuple[Kind, int], Gathered] = {}

    def has(self, message: Message) -> bool:
        """Whether `message`'s sender already sent its part of that batch."""
        gathered = self.open.get((message.kind, message.batch))
        return gathered is not None and message.sender not in gathered.missing

    def takes(self, sender: int) -> bool:
        return sender in self.expected

    def wants(self, sender: int) -> tuple[bool, bool]:
        """What a sender's part carries: an input `x` (along one of the stage's edges), the labels (the coordinator's)."""
        return sender in self.edge_of, sender == COORDINATOR and self.takes_labels

    def add(self, message: Message, part: Batch) -> Optional[Gathered]:
        """Take in one checked part; the whole batch once its last part is in, else None."""
        if len(self.expected) == 1:
            return self._part_of(self._opened(message), message, part)
        key = (message.kind, message.batch)
        gathered = self.open.get(key)
        if gathered is None:
            gathered = self.open[key] = self._opened(message)
        complete = self._part_of(gathered, message, part)
        if complete is not None:
            del self.open[key]
        return complete

    def clear(self) -> None:
        self.open.clear()

    def _opened(self, message: Message) -> Gathered:
        return Gathered(message, [None] * len(self.edge_of), missing=set(self.expected))

    def _part_of(self, gathered: Gathered, message: Message, part: Batch) -> Optional[Gathered]:
        if gathered.lead and part.lead != gathered.lead:
            raise Rejected(f"batch {message.batch}: the part from {_sender(message.sender)} has examples {list(part.lead)}, "
                           f"the parts before it {list(gathered.lead)}", message)
        gathered.lead = part.lead
        gathered.missing.discard(message.sender)
        gathered.nonfinite += part.nonfinite
        if part.x is not None:
            gathered.xs[self.edge_of[message.sender]] = part.x
        if part.labels is not None:
            gathered.labels, gathered.mask = part.labels, part.mask
        gathered.span = part.span
        if message.sender == COORDINATOR:
            gathered.message = message  # its metadata is what the head echoes to the coordinator
        return gathered if not gathered.missing else None


def _sender(sender: int) -> str:
    return "the coordinator" if sender == COORDINATOR else f"stage {sender}"


def describe_edges(expected: frozenset[int]) -> str:
    """The senders a stage takes parts from, as a refusal names them."""
    return ", ".join(_sender(sender) for sender in sorted(expected))

