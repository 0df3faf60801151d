"""coordinator/data/normalize.py: the job key `normalize` read and checked, and applied to uint8 and floating examples
(auto keeps today's [0, 1] scaling, standardize uses the training set's per-channel statistics, explicit values come
after the [0, 1] scaling as in torchvision)."""
from __future__ import annotations

import re

import pytest
import torch

from dni.coordinator.data.dataset import Dataset
from dni.coordinator.data.normalize import AUTO, Normalization, check_normalize
from dni.errors import ConfigError, DataError


def dataset(train_x: torch.Tensor, test_x: torch.Tensor, normalization: Normalization = AUTO) -> Dataset:
    labels = torch.zeros(len(train_x), dtype=torch.int64)
    return Dataset("d", train_x, labels, test_x, torch.zeros(len(test_x), dtype=torch.int64)).normalized(normalization)


def test_auto_scales_bytes_to_zero_to_one_and_takes_floats_as_they_are():
    data = dataset(torch.tensor([[0], [51], [255]], dtype=torch.uint8), torch.tensor([[255]], dtype=torch.uint8))
    assert data.train_float.tolist() == [[0.0], [pytest.approx(0.2)], [1.0]] and data.test_float.tolist() == [[1.0]]
    floats = torch.tensor([[3.0], [-7.5]])
    assert dataset(floats, floats).train_float is floats, "float32 used as given: no copy"
    assert dataset(floats.double(), floats).train_float.dtype == torch.float32


def test_none_keeps_the_raw_values_as_floats():
    data = dataset(torch.tensor([[0], [255]], dtype=torch.uint8), torch.tensor([[7]], dtype=torch.uint8), check_normalize("none"))
    assert data.train_float.tolist() == [[0.0], [255.0]] and data.test_float.tolist() == [[7.0]]


def test_standardize_uses_the_training_sets_per_channel_statistics_for_both_splits():
    train = torch.tensor([[[0, 0], [10, 10]], [[255, 255], [30, 30]]], dtype=torch.uint8)  # (2, 2 channels, 2)
    data = dataset(train, torch.tensor([[[255, 0], [20, 20]]], dtype=torch.uint8), check_normalize("standardize"))
    assert torch.allclose(data.train_float, torch.tensor([[[-1.0, -1.0], [-1.0, -1.0]], [[1.0, 1.0], [1.0, 1.0]]]))
    assert torch.allclose(data.test_float, torch.tensor([[[1.0, -1.0], [0.0, 0.0]]]), atol=1e-6)
    assert train[0, 0, 0] == 0, "the dataset's own examples are untouched"


def test_standardize_leaves_a_constant_channel_centred_with_std_one():
    floats = torch.tensor([[5.0, 1.0], [5.0, 3.0]])
    data = dataset(floats, floats, check_normalize("standardize"))
    assert data.train_float.tolist() == [[0.0, -1.0], [0.0, 1.0]] and floats.tolist() == [[5.0, 1.0], [5.0, 3.0]]


@pytest.mark.parametrize("setting", [[[0.5], [0.25]], {"mean": [0.5], "std": [0.25]}])
def test_explicit_statistics_apply_after_the_zero_to_one_scaling(setting):
    data = dataset(torch.tensor([[[0]], [[255]]], dtype=torch.uint8), torch.tensor([[[51]]], dtype=torch.uint8),
                   check_normalize(setting))
    assert data.train_float.flatten().tolist() == [-2.0, 2.0] and data.test_float.flatten().tolist() == [pytest.approx(-1.2)]
    assert check_normalize(setting).setting() == {"mean": [0.5], "std": [0.25]}


def test_explicit_statistics_must_match_the_channels():
    with pytest.raises(DataError) as error:
        dataset(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4), check_normalize([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]))
    assert str(error.value) == ("normalize gives 3 means and stds, but the examples have 1 channels (shape [1, 4, 4]; the "
                                "channel is the first dimension)")


@pytest.mark.parametrize("setting, message", [
    ("zscore", "normalize 'zscore' is not one of auto, standardize, none (or [[mean...], [std...]])"),
    (3, "normalize must be one of auto, standardize, none, [[mean...], [std...]] or {mean = [...], std = [...]}, got 3"),
    ({"mean": [0.5]}, "normalize must be one of auto, standardize, none, [[mean...], [std...]] or {mean = [...], std = [...]}, "
                      "got {'mean': [0.5]}"),
    ([[0.5], [0.2, 0.2]], "normalize gives 1 means but 2 stds; give one of each per channel"),
    ([[0.5], [0.0]], "normalize: every std must be greater than 0, got [0.0]"),
    ([[], []], "normalize: mean must be a list of finite numbers, one per channel, got []"),
    ([["0.5"], [0.2]], "normalize: mean must be a list of finite numbers, one per channel, got ['0.5']"),
    ([[0.5], [float("inf")]], "normalize: std must be a list of finite numbers, one per channel, got [inf]"),
])
def test_a_bad_setting_is_refused_naming_what_is_wrong(setting, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_normalize(setting)


def test_every_name_reads_back_from_its_setting():
    for name in ("auto", "standardize", "none"):
        assert check_normalize(check_normalize(name).setting()) == check_normalize(name)
