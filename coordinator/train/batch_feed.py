"""A dataset job's feed: one batch per step, and evaluations on the test set slipped into the same stream.

Every `eval_every` steps (an epoch by default) and after the last, the test set goes out as evaluation batches
behind the training batches sent before them; they take no credit. When all of an evaluation's results are in,
it becomes one line of metrics.jsonl, with the training tally gathered since the last line (which may still lack
a few batches in flight: they go to the next line). A checkpoint keeps how many lines were written and that
tally, so a resumed run rolls back the lines written after it and goes on with the same numbers.

A job of several heads (`dni.graph`) is scored by each: a line's accuracies and losses are its first head's, and
`heads` gives every head's by name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from dni.coordinator.train.checkpoints import Position
from dni.coordinator.data.dataset import Dataset, test_batches, train_batches
from dni.coordinator.train.feeds import Tally, EvalMessage, Run, Shown, Tensors, Timing
from dni.coordinator.jobs.job import Job
from dni.coordinator.results.plots import plot_accuracy
from dni.coordinator.results.folder import RunFolder
from dni.coordinator.jobs.shapes import check_last_shape, check_stages
from dni.coordinator.train.routes import check_head_labels
from dni.protocol import Message

__all__ = ["BatchFeed", "Evaluation", "batch_arrays"]

log = logging.getLogger("dni.trainer")


@dataclass
class Evaluation:
    """An evaluation under way: where training was when it began, each head's training tally up to then, its
    results so far (a result per batch and head)."""
    index: int
    step: int
    epoch: float
    batches: int
    train: dict[int, Tally]
    test: dict[int, Tally]
    received: int = 0


def _scores(train: Tally, test: Tally) -> dict[str, float]:
    return {"train_accuracy": train.accuracy, "train_loss": train.loss, "test_accuracy": test.accuracy,
            "test_loss": test.loss}


def batch_arrays(x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """A batch as a message's arrays."""
    return {"x": np.ascontiguousarray(x.numpy()), "labels": np.ascontiguousarray(labels.numpy())}


class BatchFeed:
    """What a dataset job feeds (see the module docstring); `Feed` is the protocol the trainer calls."""
    step_name = "step"
    message_name = "batch"
    waits_for_results = False

    def __init__(self, job: Job, data: Dataset) -> None:
        self.job = job
        self.data = data
        self.total = job.total_steps(len(data.train_y))
        self.per_epoch = job.steps_per_epoch(len(data.train_y))
        self.eval_every = job.eval_every or self.per_epoch
        self.eval_sets = test_batches(data, job.eval_batch_size, raw=True)
        self.input_shape = tuple(data.input_shape)
        self.num_classes = data.num_classes
        self.loss = job.loss
        self.pixels = data.pixels
        self.heads = job.topology.heads
        self.names = job.topology.names
        self.train_tally = self._tallies()
        self.running: dict[int, Evaluation] = {}
        self.records: list[dict[str, Any]] = []
        self.trained_steps = 0  # the steps whose results are in
        self.evaluated_at = 0  # the step the latest evaluation began at

    def _tallies(self) -> dict[int, Tally]:
        return {head: Tally() for head in self.heads}

    def check_stages(self) -> None:
        check_stages(self.job, self.input_shape, self.num_classes)
        check_head_labels(self.job, self.data.train_y[:8].numpy(), self.num_classes)

    def check_output(self, shape: tuple[int, ...], head: int) -> None:
        check_last_shape(self.job, shape, self.num_classes, head)

    def steps(self, start: int) -> Iterator[list[Tensors]]:
        for _, x, labels in train_batches(self.data, self.job.batch_size, self.job.seed, self.total, start, raw=True):
            yield [(batch_arrays(x, labels), {})]

    def evaluations(self, steps: int, total: int) -> list[EvalMessage]:
        """The test set, every `eval_every` steps and after the last (once only, when a run ends early there)."""
        if steps == self.evaluated_at or (steps % self.eval_every and steps != total):
            return []
        self.evaluated_at = steps
        index = len(self.records) + len(self.running)
        self.running[index] = Evaluation(index, steps, steps / self.per_epoch, len(self.eval_sets) * len(self.heads),
                                         self.train_tally, self._tallies())
        self.train_tally = self._tallies()
        return [EvalMessage(index * len(self.eval_sets) + offset, batch_arrays(x, labels), {"eval": index})
                for offset, (x, labels) in enumerate(self.eval_sets)]

    def final_evaluations(self) -> list[EvalMessage]:
        return []  # the last step's evaluation was the last

    def trained(self, message: Message) -> Optional[Shown]:
        self.train_tally[message.sender].add(message.meta)
        if message.sender == self.heads[0]:
            self.trained_steps = message.batch + 1
        return Shown(self.trained_steps, self.records[-1]["test_accuracy"] if self.records else None)

    def evaluated(self, message: Message, run: Run) -> Optional[Shown]:
        evaluation = self.running.get(message.meta.get("eval", -1))
        if evaluation is None:
            log.warning("ignored a result for evaluation %r, which is not running", message.meta.get("eval"))
            return None
        evaluation.test[message.sender].add(message.meta)
        evaluation.received += 1
        if evaluation.received < evaluation.batches:
            return None
        del self.running[evaluation.index]
        scores = {self.names[head]: _scores(evaluation.train[head], evaluation.test[head]) for head in self.heads}
        first = scores[self.names[self.heads[0]]]
        self.records.append(run.record({
            "eval": evaluation.index, "step": evaluation.step, "epoch": round(evaluation.epoch, 4), **first,
            **({"heads": scores} if len(scores) > 1 else {}),
        }))
        return Shown(self.trained_steps, first["test_accuracy"])

    def awaited(self) -> Optional[str]:
        evaluation = next(iter(self.running.values()), None)
        if evaluation is None:
            return None
        return f"evaluation {evaluation.index} got {evaluation.received} of {evaluation.batches} batch results"

    def accurate_enough(self) -> bool:
        return bool(self.job.stop_at_accuracy and self.records and
                    self.records[-1]["test_accuracy"] >= self.job.stop_at_accuracy)

    def position(self, step: int, sent: int) -> Position:
        first, *others = (dict(vars(self.train_tally[head])) for head in self.heads)
        return Position(step, len(self.records), {**first, **({"heads": others} if others else {})})

    def sent_by(self, position: Position) -> int:
        return position.step  # a batch a step

    def restore(self, position: Position, run: Run) -> None:
        """The tally and the metrics lines of the checkpoint; the lines written after it are rolled back."""
        if position.step:
            log.debug("resuming from step %d, the last checkpoint (%d evaluations kept)", position.step, position.evaluations)
        tallies = dict(position.tally)
        others = tallies.pop("heads", [])
        self.train_tally = {head: Tally(**tally) for head, tally in zip(self.heads, [tallies, *others])} \
            if tallies else self._tallies()
        self.running.clear()
        self.records = run.metrics_until(position.evaluations)
        self.trained_steps = self.evaluated_at = position.step

    def summary(self, timing: Timing) -> dict[str, Any]:
        last = self.records[-1]
        steady = timing.last_result - timing.first_result if timing.first_result else 0.0
        return {
            "dataset": self.job.dataset, "steps": timing.steps, "epochs": round(timing.steps / self.per_epoch, 3),
            "test_accuracy": last["test_accuracy"], "best_test_accuracy": max(r["test_accuracy"] for r in self.records),
            "train_accuracy": last["train_accuracy"], "samples_per_second": timing.trained_samples / timing.wall,
            "steady_samples_per_second": (timing.steps - timing.first_step - 1) * self.job.batch_size / steady
            if steady > 0 else 0.0,
            "resumed_from_step": timing.first_step,
        }

    def plot(self, folder: RunFolder, summary: dict[str, Any]) -> None:
        plot_accuracy([folder.path], folder.plot_path, f"{self.job.name}: {self.job.mode.value}")
