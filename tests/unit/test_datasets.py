"""coordinator/data/datasets.py: a dataset plug-in resolves by import path or entry point when the job is read, and what
it returns is checked (structure, lengths, dtypes, labels, NaN, empty splits, shapes), each error naming the plug-in."""
from __future__ import annotations

import re
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch

from dni.coordinator.data import datasets
from dni.coordinator.data.dataset import Dataset
from dni.coordinator.data.datasets import DATASET_GROUP, check_dataset, load_plugin, open_dataset, resolve_dataset, with_classes
from dni.errors import ConfigError, DataError

HERE = "tests.unit.test_datasets"
RETURNED: dict[str, object] = {}  # what `configurable` returns, set by each test
NOT_CALLABLE = 42


def pixels(count: int, shape: tuple[int, ...] = (1, 2, 2)) -> np.ndarray:
    return np.arange(count * int(np.prod(shape)), dtype=np.uint8).reshape(count, *shape)


def good(root: Path):
    return (pixels(6), np.array([0, 1, 2, 0, 1, 2])), (pixels(3), np.array([2, 1, 0]))


def configurable(root: Path):
    return RETURNED["value"]


def failing(root: Path):
    raise FileNotFoundError(f"{root}/blobs.npz")


def returning(value: object) -> str:
    RETURNED["value"] = value
    return f"{HERE}:configurable"


def test_a_plugin_returning_numpy_arrays_becomes_a_dataset_with_its_classes_counted(tmp_path):
    data = load_plugin(f"{HERE}:good", tmp_path)
    assert (data.name, data.input_shape, data.num_classes) == (f"{HERE}:good", (1, 2, 2), 3)
    assert (data.train_x.dtype, data.train_y.dtype, data.train_y.tolist()) == (torch.uint8, torch.int64, [0, 1, 2, 0, 1, 2])
    assert open_dataset(f"{HERE}:good", tmp_path).test_y.tolist() == [2, 1, 0]


def test_torch_tensors_and_floating_examples_are_taken_as_they_are_without_a_copy(tmp_path):
    x = torch.randn(4, 3)
    data = load_plugin(returning([(x, torch.tensor([0, 4, 1, 1])), (x[:2].double(), torch.tensor([0, 0], dtype=torch.int32))]), tmp_path)
    assert data.train_x.data_ptr() == x.data_ptr() and data.num_classes == 5 and data.test_y.dtype == torch.int64


def test_the_job_may_set_more_classes_but_not_fewer_than_the_labels_need(tmp_path):
    data = load_plugin(f"{HERE}:good", tmp_path)
    assert with_classes(data, 0).num_classes == 3 and with_classes(data, 7).num_classes == 7
    with pytest.raises(DataError) as error:
        with_classes(data, 2)
    assert str(error.value) == (f"num_classes = 2, but {HERE}:good has labels up to 2; set num_classes to at least 3, or "
                                "leave it out to count the classes from the labels")


BAD_RETURNS = [
    ([(pixels(2), np.zeros(2, int))], "must return ((x_train, y_train), (x_test, y_test)), got a list of 1"),
    (pixels(2), "must return ((x_train, y_train), (x_test, y_test)), got a ndarray"),
    (((pixels(2), np.zeros(2, int), 0), (pixels(2), np.zeros(2, int))), "must return ((x_train, y_train), (x_test, y_test)), got a tuple of 2"),
    (((pixels(2).tolist(), np.zeros(2, int)), (pixels(2), np.zeros(2, int))), "x_train must be a torch tensor or a numpy array, got a list of 2"),
    (((np.zeros(3, np.float32), np.zeros(3, int)), (pixels(2), np.zeros(2, int))), "x_train must have shape (N, *example_shape), got shape [3]"),
    (((pixels(0), np.zeros(0, int)), (pixels(2), np.zeros(2, int))), "x_train is empty: a split needs at least one example"),
    (((pixels(2), np.zeros(2, int)), (pixels(0), np.zeros(0, int))), "x_test is empty: a split needs at least one example"),
    (((pixels(2).astype(np.int64), np.zeros(2, int)), (pixels(2), np.zeros(2, int))), "x_train must be uint8 or floating point, got int64"),
    (((np.array([["a"], ["b"]]), np.zeros(2, int)), (pixels(2), np.zeros(2, int))), "x_train must hold numbers, got a numpy array of <U1"),
    (((np.array([[0.0, np.nan], [np.inf, 1.0]]), np.zeros(2, int)), (np.zeros((2, 2)), np.zeros(2, int))),
     "x_train has 2 NaN or infinite values"),
    (((pixels(2), np.array([0.0, 1.0])), (pixels(2), np.zeros(2, int))), "y_train must be integer class labels, got float64"),
    (((pixels(2), np.array([True, False])), (pixels(2), np.zeros(2, int))), "y_train must be integer class labels, got bool"),
    (((pixels(2), np.zeros((2, 1), int)), (pixels(2), np.zeros(2, int))), "y_train must be one class label per example, shape (N,), got shape [2, 1]"),
    (((pixels(3), np.zeros(2, int)), (pixels(2), np.zeros(2, int))), "x_train has 3 examples but y_train has 2 labels"),
    (((pixels(2), np.zeros(2, int)), (pixels(2), np.zeros(3, int))), "x_test has 2 examples but y_test has 3 labels"),
    (((pixels(2), np.array([0, -1])), (pixels(2), np.zeros(2, int))),
     "y_train has negative labels (the smallest is -1); class labels are 0, 1, 2, ..."),
    (((pixels(2), np.zeros(2, int)), (pixels(2, (2, 2)), np.zeros(2, int))), "train examples have shape [1, 2, 2] but test examples [2, 2]"),
    (((pixels(2), np.zeros(2, int)), (pixels(2).astype(np.float32), np.zeros(2, int))),
     "x_train is uint8 but x_test is float32: both uint8 or both floating point"),
]


@pytest.mark.parametrize("value, message", BAD_RETURNS)
def test_what_a_plugin_returns_is_checked_and_the_error_names_it(value, message, tmp_path):
    with pytest.raises(DataError) as error:
        load_plugin(returning(value), tmp_path)
    assert str(error.value) == f"dataset plug-in '{HERE}:configurable': {message}"


def test_a_plugin_that_raises_is_reported_as_its_own_failure(tmp_path):
    with pytest.raises(DataError) as error:
        load_plugin(f"{HERE}:failing", tmp_path)
    assert str(error.value) == f"dataset plug-in '{HERE}:failing' failed: FileNotFoundError: {tmp_path}/blobs.npz"


def test_a_plugin_that_cannot_be_imported_or_called_is_refused_when_the_job_is_read():
    with pytest.raises(ConfigError) as error:
        check_dataset("no_such_module:load")
    assert str(error.value) == ("dataset plug-in 'no_such_module:load' cannot be imported: No module named 'no_such_module' "
                                "(install it, or put its folder on PYTHONPATH of every process that uses it)")
    with pytest.raises(ConfigError) as error:
        check_dataset(f"{HERE}:missing")
    assert str(error.value) == (f"dataset plug-in '{HERE}:missing' cannot be imported: module '{HERE}' has no attribute 'missing'")
    with pytest.raises(ConfigError) as error:
        check_dataset(f"{HERE}:NOT_CALLABLE")
    assert str(error.value) == f"dataset plug-in '{HERE}:NOT_CALLABLE' is not callable (a int)"
    check_dataset("cifar100")  # built-in: nothing to resolve


def test_an_installed_plugin_resolves_by_its_entry_point_name(monkeypatch):
    entry = EntryPoint("blobs", f"{HERE}:good", DATASET_GROUP)
    monkeypatch.setattr(datasets, "entry_points", lambda group: [entry] if group == DATASET_GROUP else [])
    assert resolve_dataset("blobs") is good
    with pytest.raises(ConfigError) as error:
        resolve_dataset("imagenet")
    assert str(error.value) == ("dataset 'imagenet' is not one of mnist, fashion_mnist, kmnist, cifar10, cifar100, svhn, "
                                "blobs (built-in or installed under the entry point dni.datasets), nor an import path "
                                "package.module:function")
    broken = EntryPoint("broken", "no_such_module:load", DATASET_GROUP)
    monkeypatch.setattr(datasets, "entry_points", lambda group: [broken])
    with pytest.raises(ConfigError, match=re.escape("dataset plug-in 'broken' (no_such_module:load) cannot be imported: "
                                                    "No module named 'no_such_module'")):
        resolve_dataset("broken")


def test_the_dataset_keeps_what_the_plugin_gave_and_converts_once(tmp_path):
    data = load_plugin(f"{HERE}:good", tmp_path)
    assert isinstance(data, Dataset) and data.train_float is data.train_float
    assert data.train_float.dtype == torch.float32 and float(data.train_float.max()) == pytest.approx(23 / 255)
