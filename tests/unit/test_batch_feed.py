"""coordinator/train/batch_feed.py: what a dataset job feeds and tallies, without a trainer: one batch a step, its
evaluations and their metrics lines, its part of a checkpoint, its summary. The data are a few random images."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dni.coordinator.train.batch_feed import BatchFeed
from dni.coordinator.train.feeds import Tally
from dni.coordinator.train.checkpoints import Position
from dni.coordinator.data.dataset import Dataset, train_batches
from dni.coordinator.train.feeds import Shown, Timing
from dni.protocol import Kind, Message
from tests.conftest import small_job

BATCH = 8


class Lines:
    """The trainer's side of a feed's metrics lines: each line kept as given, the kept ones handed back."""

    def __init__(self, kept: list[dict[str, Any]] | None = None) -> None:
        self.lines: list[dict[str, Any]] = kept or []
        self.asked: list[int] = []

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        self.lines.append(fields)
        return fields

    def metrics_until(self, evaluations: int) -> list[dict[str, Any]]:
        self.asked.append(evaluations)
        return self.lines[:evaluations]


def feed(tmp_path: Path, **settings: Any) -> BatchFeed:
    generator = torch.Generator().manual_seed(0)
    data = Dataset("mnist", torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=generator),
                   torch.randint(0, 10, (40,), generator=generator),
                   torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=generator),
                   torch.tensor([0, 1] * 6))
    table = {"batch_size": BATCH, "eval_batch_size": 10, "iterations": 10, "eval_every": 4, **settings}
    return BatchFeed(small_job(tmp_path / "no-data", tmp_path / "runs", **table), data)


def result(kind: Kind, batch: int, loss: float, correct: int, count: int, **meta: Any) -> Message:
    return Message(kind, "job", batch, batch, 2, {"loss_sum": loss, "correct": correct, "count": count, **meta})


def test_each_step_is_one_batch_of_the_seeded_order_as_arrays(tmp_path):
    batches = feed(tmp_path)
    steps = list(batches.steps(3))
    expected = list(train_batches(batches.data, BATCH, batches.job.seed, 10, 3, raw=True))
    assert [len(messages) for messages in steps] == [1] * 7
    tensors, meta = steps[0][0]
    pixels = np.uint8 if batches.pixels is not None else np.float32  # a uint8 dataset's batches go out as its bytes
    assert meta == {} and (tensors["x"].dtype, tensors["labels"].dtype) == (pixels, np.int64)
    assert np.array_equal(tensors["labels"], expected[0][2].numpy())
    assert (batches.input_shape, batches.num_classes, batches.loss) == ((1, 4, 4), 10, "cross_entropy")


def test_an_evaluation_is_due_every_eval_every_steps_and_after_the_last_once(tmp_path):
    batches = feed(tmp_path)
    due = {steps: [(e.number, e.meta) for e in batches.evaluations(steps, 10)] for steps in range(1, 11)}
    assert {steps: numbers for steps, numbers in due.items() if numbers} == {
        4: [(0, {"eval": 0}), (1, {"eval": 0})], 8: [(2, {"eval": 1}), (3, {"eval": 1})],
        10: [(4, {"eval": 2}), (5, {"eval": 2})]}
    assert batches.evaluations(10, 10) == [], "a run stopped early where it had just evaluated evaluates once"
    assert batches.awaited() == "evaluation 0 got 0 of 2 batch results"


def test_an_evaluation_becomes_a_metrics_line_once_every_result_is_in(tmp_path):
    batches, lines = feed(tmp_path), Lines()
    assert batches.trained(result(Kind.TRAIN_RESULT, 0, 4.0, 2, 8)) == Shown(1, None)
    batches.evaluations(4, 10)
    assert batches.evaluated(result(Kind.EVAL_RESULT, 0, 5.0, 5, 10, eval=0), lines) is None
    assert batches.evaluated(result(Kind.EVAL_RESULT, 1, 1.0, 1, 2, eval=0), lines) == Shown(1, 0.5)
    assert lines.lines == [{"eval": 0, "step": 4, "epoch": 0.8, "train_accuracy": 0.25, "train_loss": 0.5,
                            "test_accuracy": 0.5, "test_loss": 0.5}]
    assert batches.awaited() is None and batches.train_tally == {2: Tally()}
    assert batches.trained(result(Kind.TRAIN_RESULT, 1, 1.0, 1, 8)) == Shown(2, 0.5), "the latest accuracy is shown"


def test_a_result_for_an_evaluation_not_running_is_ignored(tmp_path, caplog):
    batches, lines = feed(tmp_path), Lines()
    assert batches.evaluated(result(Kind.EVAL_RESULT, 0, 1.0, 1, 2, eval=7), lines) is None
    assert "ignored a result for evaluation 7, which is not running" in caplog.text and lines.lines == []


@pytest.mark.parametrize(("accuracy", "enough"), [(0.5, True), (0.49, False)])
def test_stop_at_accuracy_is_reached_by_the_last_line(tmp_path, accuracy, enough):
    batches = feed(tmp_path, stop_at_accuracy=0.5)
    assert not batches.accurate_enough()
    batches.records = [{"test_accuracy": accuracy}]
    assert batches.accurate_enough() is enough


def test_a_checkpoint_keeps_the_lines_written_and_the_tally_since(tmp_path):
    batches = feed(tmp_path)
    batches.records = [{"eval": 0, "test_accuracy": 0.1}, {"eval": 1, "test_accuracy": 0.2}]
    batches.trained(result(Kind.TRAIN_RESULT, 7, 3.0, 2, 8))
    position = batches.position(8, 8)
    assert position == Position(8, 2, {"loss_sum": 3.0, "correct": 2, "count": 8})
    assert batches.sent_by(position) == 8
    again, lines = feed(tmp_path), Lines([{"eval": 0}, {"eval": 1}, {"eval": 2}])
    again.restore(position, lines)
    assert (again.records, again.train_tally, lines.asked) == ([{"eval": 0}, {"eval": 1}], {2: Tally(3.0, 2, 8)}, [2])
    assert again.evaluations(8, 10) == [], "the evaluation at the checkpoint's step is not repeated"


def test_its_summary_says_how_accurate_and_how_fast(tmp_path):
    batches = feed(tmp_path)
    batches.records = [{"test_accuracy": 0.5, "train_accuracy": 0.4}, {"test_accuracy": 0.25, "train_accuracy": 0.6}]
    summary = batches.summary(Timing(steps=10, first_step=2, wall=4.0, trained_samples=80, first_result=100.0,
                                     last_result=102.0))
    assert summary == {"dataset": "mnist", "steps": 10, "epochs": 2.0, "test_accuracy": 0.25, "best_test_accuracy": 0.5,
                       "train_accuracy": 0.6, "samples_per_second": 20.0, "steady_samples_per_second": 7 * BATCH / 2.0,
                       "resumed_from_step": 2}
