"""The paper's sequence tasks, generated in process from a seed, and their curriculum (Jaderberg et al. 2017, 3.1).

- copy: N random binary vectors of `bits` bits, then a delimiter; the network then reproduces the N vectors.
- repeat copy: the same, with a repeat count R on the delimiter step (scaled to 0..1 by `max_repeats`); the network
  reproduces the vectors R times and then raises an end bit.
- characters: a text file read as one long stream per batch row (the state never resets within a stream), a
  held-out tail for bits per character.

A batch is one sequence length for every row, so all rows cross each chunk boundary together. Every task names
the per-step loss its readout scores (`loss`, one of `dni.workers.stage.losses`, in nats, reported here in bits by
`bits_per_step`): summed over a copy step's bits, a character's cross entropy; `mask` says which steps count (a copy task scores only the reproduction). The curriculum raises the length by one once the error,
averaged over the last `window` batches, falls below 0.15 bits per scored time step, as in the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from dni.errors import DataError

__all__ = ["CharText", "CopyTask", "Curriculum", "RepeatCopyTask", "SOLVED_BITS", "SequenceBatch", "SequenceTask", "bits_per_step",
           "open_task"]


def bits_per_step(loss_sum: float, steps: float) -> float:
    """A readout's summed loss over its scored steps, in nats, as bits per scored step."""
    return loss_sum / math.log(2) / max(1.0, steps)

SOLVED_BITS = 0.15  # the paper's threshold: error below this many bits per time step solves a length


@dataclass(frozen=True)
class SequenceBatch:
    inputs: torch.Tensor  # float (B, L, input_size)
    targets: torch.Tensor  # float bits (B, L, output_size), or int64 characters (B, L)
    mask: torch.Tensor  # float (B, L): 1 on the steps that are scored
    start: bool = True  # a new sequence starts here (the state resets); False continues the streams
    ends: bool = True  # the sequence ends with this batch (nothing is predicted beyond it)


class SequenceTask(Protocol):
    name: str
    input_size: int
    output_size: int
    loss: str  # the per-step loss its readout is scored with (dni.workers.stage.losses)

    def batch(self, length: int, batch_size: int, generator: torch.Generator) -> SequenceBatch: ...



class CopyTask:
    """Copy: N vectors of `bits` random bits, a delimiter step, then N steps that must reproduce them."""
    name, loss = "copy", "bits"

    def __init__(self, bits: int = 8) -> None:
        self.bits, self.input_size, self.output_size = bits, bits + 1, bits

    def batch(self, length: int, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        data = torch.randint(0, 2, (batch_size, length, self.bits), generator=generator).float()
        total = 2 * length + 1
        inputs = torch.zeros(batch_size, total, self.input_size)
        inputs[:, :length, :self.bits] = data
        inputs[:, length, self.bits] = 1.0
        targets = torch.zeros(batch_size, total, self.output_size)
        targets[:, length + 1:] = data
        mask = torch.zeros(batch_size, total)
        mask[:, length + 1:] = 1.0
        return SequenceBatch(inputs, targets, mask)


class RepeatCopyTask:
    """Repeat copy: N vectors, a delimiter carrying R/max_repeats, then R copies of the vectors and an end bit."""
    name, loss = "repeat-copy", "bits"

    def __init__(self, bits: int = 8, max_repeats: int = 3) -> None:
        self.bits, self.max_repeats = bits, max_repeats
        self.input_size, self.output_size = bits + 2, bits + 1

    def batch(self, length: int, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        repeats = int(torch.randint(1, self.max_repeats + 1, (), generator=generator))
        data = torch.randint(0, 2, (batch_size, length, self.bits), generator=generator).float()
        answer = length * repeats + 1
        total = length + 1 + answer
        inputs = torch.zeros(batch_size, total, self.input_size)
        inputs[:, :length, :self.bits] = data
        inputs[:, length, self.bits] = 1.0
        inputs[:, length, self.bits + 1] = repeats / self.max_repeats
        targets = torch.zeros(batch_size, total, self.output_size)
        targets[:, length + 1:total - 1, :self.bits] = data.repeat(1, repeats, 1)
        targets[:, total - 1, self.bits] = 1.0
        mask = torch.zeros(batch_size, total)
        mask[:, length + 1:] = 1.0
        return SequenceBatch(inputs, targets, mask)


class CharText:
    """A text file as characters: one stream per batch row over the head, bits per character on the tail."""
    name, loss = "chars", "cross_entropy"

    def __init__(self, path: Path, held_out: float = 0.1) -> None:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as error:
            raise DataError(f"cannot read the text file {path}: {error}") from error
        alphabet = sorted(set(text))
        tail = int(len(text) * held_out)
        if len(alphabet) < 2 or tail < 2 or len(text) - tail < 2:
            raise DataError(f"{path}: too little text for a character model ({len(text)} characters)")
        codes = torch.tensor(_encode(text, alphabet))
        self.alphabet = alphabet
        self.train, self.test = codes[:-tail], codes[-tail:]
        self.input_size = self.output_size = len(alphabet)
        self.position = 0  # where the streams go on in each row's part of the head

    def batch(self, length: int, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        """The next `length` characters of each of `batch_size` streams (each a contiguous part of the head)."""
        stride = len(self.train) // batch_size
        if stride < length + 1:
            raise DataError(f"the text's head ({len(self.train)} characters) is too short for {batch_size} streams "
                            f"of {length + 1}")
        start = self.position == 0 or self.position + length + 1 > stride
        if start:
            self.position = 0
        rows = torch.arange(batch_size)[:, None] * stride + self.position + torch.arange(length + 1)
        window = self.train[rows]
        self.position += length
        return SequenceBatch(self.one_hot(window[:, :-1]), window[:, 1:], torch.ones(batch_size, length), start, False)

    def evaluation_batch(self, limit: int, rows: int) -> SequenceBatch:
        """(At most `limit` characters of) the held-out tail as `rows` streams side by side, each from its start."""
        codes = self.test[:limit + 1]
        rows = max(1, min(rows, (len(codes) - 1) // 2))
        steps = (len(codes) - 1) // rows
        window = codes[torch.arange(rows)[:, None] * steps + torch.arange(steps + 1)]
        return SequenceBatch(self.one_hot(window[:, :-1]), window[:, 1:], torch.ones(rows, steps), True, True)

    def one_hot(self, codes: torch.Tensor) -> torch.Tensor:
        return F.one_hot(codes, self.input_size).float()


def open_task(name: str, text: str = "") -> SequenceTask:
    """A task by its job-file name: copy, repeat-copy, or chars over the text file `text`."""
    if name == "chars":
        return CharText(Path(text))
    return CopyTask() if name == "copy" else RepeatCopyTask()


def _encode(text: str, alphabet: list[str]) -> list[int]:
    index = {char: code for code, char in enumerate(alphabet)}
    return [index[char] for char in text]


@dataclass
class Curriculum:
    """The sequence length: one more once the error over the last `window` batches is below `threshold` bits/step."""
    level: int = 1
    threshold: float = SOLVED_BITS
    window: int = 10
    solved: int = 0  # the longest length solved so far
    recent: list[float] = field(default_factory=list)

    def record(self, error: float) -> bool:
        """One batch's error (bits per scored step); True when this solves the level and the length grows."""
        self.recent = [*self.recent[-(self.window - 1):], error]
        if len(self.recent) < self.window or sum(self.recent) / self.window >= self.threshold:
            return False
        self.solved, self.level, self.recent = self.level, self.level + 1, []
        return True
