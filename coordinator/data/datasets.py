"""Datasets by name: torchvision's built-in ones, or a plug-in, checked before any worker starts.

A plug-in is a callable `function(root: Path)` returning `((x_train, y_train), (x_test,
y_test))`, the shape of `tf.keras.datasets.mnist.load_data()`: torch tensors or numpy
arrays, x (N, *example_shape) uint8 or floating point, y integer class labels (N,). A job
names it by import path (`package.module:function`) or, once installed, by the name it
registers under the entry-point group `dni.datasets`. The name is resolved when the job is
read; what the callable returns is checked when it is loaded, and every error names it.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dni.coordinator.data.dataset import BUILTIN_DATASETS, Dataset, load_dataset
from dni.errors import ConfigError, DataError
from dni.workers.build.registry import import_hint

__all__ = ["DATASET_GROUP", "check_dataset", "load_plugin", "open_dataset", "resolve_dataset", "with_classes"]

DATASET_GROUP = "dni.datasets"
CONTRACT = "((x_train, y_train), (x_test, y_test))"


def check_dataset(name: str) -> None:
    """Raise ConfigError unless `name` is a built-in dataset or a plug-in that resolves to a callable."""
    if name not in BUILTIN_DATASETS:
        resolve_dataset(name)


def resolve_dataset(name: str) -> Callable[..., Any]:
    """The plug-in's callable: by import path `package.module:function`, else by its `dni.datasets` entry point."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"dataset plug-in {name!r} cannot be imported: {error}{import_hint(error)}") from error
    else:
        found = [entry for entry in entry_points(group=DATASET_GROUP) if entry.name == name]
        if not found:
            installed = sorted(entry.name for entry in entry_points(group=DATASET_GROUP))
            raise ConfigError(f"dataset {name!r} is not one of {', '.join(BUILTIN_DATASETS + tuple(installed))} (built-in or "
                              f"installed under the entry point {DATASET_GROUP}), nor an import path package.module:function")
        try:
            target = found[0].load()
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"dataset plug-in {name!r} ({found[0].value}) cannot be imported: {error}") from error
    if not callable(target):
        raise ConfigError(f"dataset plug-in {name!r} is not callable (a {type(target).__name__})")
    return target


def open_dataset(name: str, root: Path, download: bool = True, verify: bool = True) -> Dataset:
    """The dataset `name` from `root`: built-in through torchvision, else the plug-in's, checked."""
    return load_dataset(name, root, download, verify) if name in BUILTIN_DATASETS else load_plugin(name, root)


def load_plugin(name: str, root: Path) -> Dataset:
    """What the plug-in returns for `root`, checked and held as tensors; num_classes is the largest label + 1."""
    function = resolve_dataset(name)
    try:
        returned = function(root)
    except Exception as error:  # the plug-in's own failure, reported as its own
        raise DataError(f"dataset plug-in {name!r} failed: {type(error).__name__}: {error}") from error
    try:
        (train_x, train_y), (test_x, test_y) = _pairs(returned)
        train_x, test_x = _examples("x_train", train_x), _examples("x_test", test_x)
        train_y, test_y = _labels("y_train", train_y, len(train_x)), _labels("y_test", test_y, len(test_x))
        _same_kind(train_x, test_x)
    except DataError as error:
        raise DataError(f"dataset plug-in {name!r}: {error}") from None
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes=num_classes)


def with_classes(data: Dataset, num_classes: int) -> Dataset:
    """`data` with the job's `num_classes` (0: keep the dataset's), which must cover every label."""
    if not num_classes:
        return data
    largest = int(max(data.train_y.max(), data.test_y.max()))
    if largest >= num_classes:
        raise DataError(f"num_classes = {num_classes}, but {data.name} has labels up to {largest}; "
                        f"set num_classes to at least {largest + 1}, or leave it out to count the classes from the labels")
    return replace(data, num_classes=num_classes)


def _pairs(returned: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    if not (isinstance(returned, (tuple, list)) and len(returned) == 2
            and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in returned)):
        raise DataError(f"must return {CONTRACT}, got {_describe(returned)}")
    return (returned[0][0], returned[0][1]), (returned[1][0], returned[1][1])


def _examples(what: str, x: Any) -> torch.Tensor:
    tensor = _tensor(what, x)
    if tensor.dim() < 2:
        raise DataError(f"{what} must have shape (N, *example_shape), got shape {list(tensor.shape)}")
    if len(tensor) == 0:
        raise DataError(f"{what} is empty: a split needs at least one example")
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise DataError(f"{what} must be uint8 or floating point, got {_dtype(tensor)}")
    if tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise DataError(f"{what} has {bad} NaN or infinite values")
    return tensor


def _labels(what: str, y: Any, count: int) -> torch.Tensor:
    tensor = _tensor(what, y)
    if tensor.dim() != 1:
        raise DataError(f"{what} must be one class label per example, shape (N,), got shape {list(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"{what} must be integer class labels, got {_dtype(tensor)}")
    if len(tensor) != count:
        raise DataError(f"x_{what[2:]} has {count} examples but {what} has {len(tensor)} labels")
    labels = tensor.long()
    if int(labels.min()) < 0:
        raise DataError(f"{what} has negative labels (the smallest is {int(labels.min())}); class labels are 0, 1, 2, ...")
    return labels


def _same_kind(train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"train examples have shape {list(train_x.shape[1:])} but test examples {list(test_x.shape[1:])}")
    if (train_x.dtype == torch.uint8) != (test_x.dtype == torch.uint8):
        raise DataError(f"x_train is {_dtype(train_x)} but x_test is {_dtype(test_x)}: both uint8 or both floating point")


def _tensor(what: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DataError(f"{what} must hold numbers, got a numpy array of {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"{what} must be a torch tensor or a numpy array, got {_describe(value)}")


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"
