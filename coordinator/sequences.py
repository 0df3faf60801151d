"""Training a recurrent core on a sequence task in one process: truncated BPTT of `truncation` steps, with or
without synthetic gradients over time (`dni.workers.recurrent`), and a per-step linear readout with the task's loss.

Each batch of sequences is cut into chunks of T = `truncation` steps. For each chunk the core runs from the
state it kept, the readout scores the chunk's steps (cross entropy in nats, summed over the batch, on the
task's scored steps), its gradient w.r.t. the core's outputs goes back into the core, and both update. The
copy tasks follow the curriculum (`Curriculum`); the character task is scored on the text's held-out tail.
The summary has `max_length_solved` and the curve (one point per batch) or `test_bits_per_char`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

from dni.coordinator.tasks import CharText, Curriculum, SequenceBatch, SequenceTask
from dni.spec import Mode, OptimizerSpec
from dni.workers.optimizers import make_optimizer
from dni.workers.recurrent import RecurrentCompute, RecurrentCore, linear_synthesizer, resolve_core

__all__ = ["SequenceModel", "SequenceSettings", "train_sequences"]


@dataclass(frozen=True)
class SequenceSettings:
    mode: Mode = Mode.SG
    truncation: int = 3  # T: time steps per chunk, the truncation of BPTT
    core: str = "lstm"
    hidden: int = 64
    batch_size: int = 32
    batches: int = 1000  # batches of sequences (the step budget)
    lr: float = 1e-3
    seed: int = 0
    discount: float = 1.0  # of the synthetic gradient at each chunk's end
    text_window: int = 100  # character task: steps of each stream per batch
    eval_characters: int = 20_000  # character task: at most this much of the held-out tail is scored


class SequenceModel:
    """A recurrent stage (`RecurrentCompute`) and the per-step linear readout that is the last stage."""

    def __init__(self, task: SequenceTask, settings: SequenceSettings) -> None:
        torch.manual_seed(settings.seed)
        core = resolve_core(settings.core)((task.input_size,), hidden=settings.hidden)
        synthesizer = linear_synthesizer(cast(RecurrentCore, core).state_size) if settings.mode.uses_synthesizer else None
        optimizer = OptimizerSpec("adam", settings.lr)
        self.recurrent = RecurrentCompute(core, synthesizer, mode=settings.mode, optimizer=optimizer,
                                          discount=settings.discount)
        self.readout = nn.Linear(settings.hidden, task.output_size)
        self.readout_optimizer = make_optimizer(optimizer, self.readout.parameters())
        self.task = task

    def train_chunk(self, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, start: bool,
                    last: bool) -> torch.Tensor:
        """One chunk: the core from its kept state, the readout's loss, both updated; the chunk's summed bits."""
        outputs = self.recurrent.forward(x, start=start).requires_grad_()
        bits = (self.task.step_bits(self.readout(outputs), targets) * mask).sum()
        self.readout_optimizer.zero_grad(set_to_none=True)
        (bits * math.log(2)).backward()
        self.readout_optimizer.step()
        self.recurrent.backward(outputs.grad, last=last)
        return bits.detach()

    def train_batch(self, batch: SequenceBatch, truncation: int) -> float:
        """A batch of sequences chunk by chunk; its error in bits per scored step."""
        length = batch.inputs.shape[1]
        total = torch.zeros(())
        for begin in range(0, length, truncation):
            end = min(begin + truncation, length)
            total += self.train_chunk(batch.inputs[:, begin:end], batch.targets[:, begin:end], batch.mask[:, begin:end],
                                      start=batch.start and begin == 0, last=batch.ends and end == length)
        return float(total) / max(1.0, float(batch.mask.sum()))

    @torch.no_grad()
    def bits_per_character(self, text: CharText, limit: int, truncation: int) -> float:
        """Bits per character over (at most `limit` of) the held-out tail, one stream from a zero state."""
        codes = text.test[:limit + 1]
        inputs, targets = text.one_hot(codes[None, :-1]), codes[None, 1:]
        state, total = None, 0.0
        for begin in range(0, inputs.shape[1], truncation):
            outputs, state = self.recurrent.evaluate(inputs[:, begin:begin + truncation], state)
            total += float(self.task.step_bits(self.readout(outputs), targets[:, begin:begin + truncation]).sum())
        return total / targets.numel()


def train_sequences(task: SequenceTask, settings: SequenceSettings) -> dict[str, Any]:
    """Train on `task` for `settings.batches` batches; the summary (see the module docstring)."""
    model = SequenceModel(task, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    curriculum = Curriculum()
    curve: list[dict[str, Any]] = []
    started = time.monotonic()
    for step in range(settings.batches):
        length = settings.text_window if isinstance(task, CharText) else curriculum.level
        error = model.train_batch(task.batch(length, settings.batch_size, generator), settings.truncation)
        curve.append({"step": step, "length": length, "bits_per_step": error})
        if not isinstance(task, CharText):
            curriculum.record(error)
    summary: dict[str, Any] = {"task": task.name, **asdict(settings), "mode": settings.mode.value,
                               "wall_seconds": time.monotonic() - started, "curve": curve}
    if isinstance(task, CharText):
        summary["test_bits_per_char"] = model.bits_per_character(task, settings.eval_characters, settings.truncation)
    else:
        summary["max_length_solved"] = curriculum.solved
    return summary
