"""A sequence job in one process: the network in one piece, the paper's own setting (Jaderberg et al. 2017, 3.1).

The stages are built as the workers build them (`build_stages`, the same seeds) and see the same batches
and chunks (`batch_for`, `chunks_of`), but nothing stands between them: the readout's true gradient goes straight
back through every recurrent core, so truncated BPTT of T steps reaches through the whole network, and in `sg`
only the synthesizer over time bridges each truncation (no synthesizer between stages). In `backprop` this is
what the workers compute, step for step; in `sg` the workers also decouple each core from the stage after it.

The summary has the fields of a run on workers: the curve (one point per batch), and `max_length_solved` (copy
tasks) or `test_bits_per_char` (characters).
"""
from __future__ import annotations

import time
from typing import Any, Optional, cast

import numpy as np
import torch

from dni.coordinator.jobs.job import Job
from dni.coordinator.train.chunk_feed import batch_for, chunks_of, sequence_summary, with_readout_width
from dni.coordinator.data.tasks import CharText, Curriculum, SequenceTask, bits_per_step, open_task
from dni.spec import Mode
from dni.workers.stage.blocks import Block, Span
from dni.workers.build.builder import build_stages
from dni.workers.stage.compute import StageCompute, only_input, only_output

__all__ = ["SequenceModel", "train_sequences"]


class SequenceModel:
    """A sequence job's recurrent cores and readout, stepped chunk by chunk in this process."""

    def __init__(self, job: Job, task: SequenceTask) -> None:
        built = build_stages(job.stages, input_shape=(task.input_size,), mode=job.mode, num_classes=task.output_size,
                             seed=job.seed, over_steps=True, optimizer=job.optimizer, discount=job.discount)
        between = Mode.BACKPROP if job.mode.hidden_stages_learn else Mode.NO_BPROP  # true gradients between stages
        self.cores = [StageCompute(cast(Block, modules.block), mode=between, optimizer=job.optimizer, first=index == 0,
                                   name=f"stage {index}") for index, modules in enumerate(built[:-1])]
        self.readout = StageCompute(cast(Block, built[-1].block), mode=job.mode, optimizer=job.optimizer,
                                    first=len(built) == 1, loss=task.loss, name="readout")

    def train_chunk(self, tensors: dict[str, np.ndarray], flags: dict[str, bool]) -> torch.Tensor:
        """One chunk forward through every core and the readout, and back; (loss, steps right, steps scored)."""
        span, x = Span(flags["start"], flags["last"]), torch.from_numpy(tensors["x"])
        for core in self.cores:
            x = only_output(core.forward(0, x, None, span))
        result = self.readout.train_last(x, torch.from_numpy(tensors["labels"]), torch.from_numpy(tensors["mask"]), span)
        gradient = only_input(result.upstream)
        for core in reversed(self.cores):
            if gradient is None:
                break
            gradient = only_input(core.receive_target(0, gradient))
        return result.score

    def evaluate(self, text: CharText, limit: int, rows: int, truncation: int) -> float:
        """Bits per character over (at most `limit` characters of) the held-out tail, in `rows` streams."""
        total = torch.zeros(3, dtype=torch.float64)
        for tensors, flags in chunks_of(text.evaluation_batch(limit, rows), truncation):
            span, x = Span(flags["start"], flags["last"]), torch.from_numpy(tensors["x"])
            for core in self.cores:
                x = only_output(core.evaluate(x, None, span))
            total += self.readout.evaluate_last(x, torch.from_numpy(tensors["labels"]), torch.from_numpy(tensors["mask"]),
                                                span).score
        return bits_per_step(float(total[0]), float(total[2]))


def train_sequences(job: Job, task: Optional[SequenceTask] = None) -> dict[str, Any]:
    """Train the sequence job `job` in this process (its task opened from the job unless given); the summary."""
    task = task or open_task(job.task, job.text)
    job = with_readout_width(job, task)
    model = SequenceModel(job, task)
    curriculum, curve = Curriculum(), []
    text = task if isinstance(task, CharText) else None
    started = time.monotonic()
    for index in range(job.iterations):
        level = job.text_window if text else curriculum.level
        total = sum((model.train_chunk(tensors, flags) for tensors, flags in chunks_of(batch_for(job, task, index, level),
                                                                                      job.truncation)),
                    torch.zeros(3, dtype=torch.float64))
        error = bits_per_step(float(total[0]), float(total[2]))
        curve.append({"batch": index, "length": level, "bits_per_step": error})
        if text is None:
            curriculum.record(error)
    summary = sequence_summary(job, task, job.iterations, curve, time.monotonic() - started)
    if text is not None:
        summary["test_bits_per_char"] = model.evaluate(text, job.eval_characters, job.batch_size, job.truncation)
    else:
        summary["max_length_solved"] = curriculum.solved
    return summary
