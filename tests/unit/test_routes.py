"""coordinator/train/routes.py: the data to the stages that take it, the labels straight to those that use them."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from dni.coordinator.jobs.job import job_from_table
from dni.coordinator.train.routes import Routes, check_head_labels
from dni.errors import ConfigError

STAGES = [{"name": "trunk", "inputs": ["data"], "kind": "linear_bn_relu", "features": 8},
          {"name": "digit", "inputs": ["trunk"], "kind": "linear", "features": 10, "loss": "cross_entropy"},
          {"name": "parity", "inputs": ["trunk", "data"], "kind": "linear", "features": 2, "loss": "cross_entropy",
           "labels": "unit_labels:parity", "num_classes": 2}]


@pytest.fixture
def labels_module(monkeypatch):
    module = types.ModuleType("unit_labels")
    module.parity = lambda digits: digits % 2
    module.floats = lambda digits: digits.astype(np.float32)
    module.too_big = lambda digits: digits + 2
    module.broken = lambda digits: digits.no_such_method()
    monkeypatch.setitem(sys.modules, "unit_labels", module)


def job(**head):
    return job_from_table({"name": "x", "dataset": "mnist", "stages": [*STAGES[:2], {**STAGES[2], **head}]})


def test_each_stage_is_sent_the_data_it_takes_and_its_own_labels(labels_module):
    arrays = {"x": np.ones((4, 3), np.float32), "labels": np.array([1, 2, 3, 4], np.int64)}
    parts = dict(Routes.of(job(), takes_labels=[False, True, True]).parts(arrays))
    assert set(parts) == {0, 1, 2} and set(parts[0]) == {"x"} and set(parts[1]) == {"labels"}
    assert parts[2]["labels"].tolist() == [1, 0, 1, 0] and parts[2]["x"] is arrays["x"]
    assert parts[1]["labels"] is arrays["labels"]
    conditioned = dict(Routes.of(job(), takes_labels=[True, True, True]).parts({**arrays, "mask": np.ones((4, 1))}))
    assert set(conditioned[0]) == {"x", "labels", "mask"}, "a chunk's mask goes with its labels"


@pytest.mark.parametrize("labels, message", [
    ("unit_labels:floats", "must return int64 labels, one per example, in 0..1 (num_classes = 2); got float32 [4]"),
    ("unit_labels:too_big", "must return int64 labels, one per example, in 0..1 (num_classes = 2); got int64 [4]"),
    ("unit_labels:missing", "stage 2 ('parity'): "),
    ("unit_labels:broken", "head 'parity': labels = 'unit_labels:broken' failed on a sample batch: AttributeError: "),
])
def test_a_head_without_labels_it_can_learn_from_is_refused_naming_it(labels, message, labels_module):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        check_head_labels(job(labels=labels), np.array([1, 2, 3, 4], np.int64), 10)
