"""coordinator/data.py: finding the datasets (a named root must exist; a missing dataset gets dni's advice, not
torchvision's) and cutting a dataset into seeded training batches and in-order test batches, on a small synthetic one."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dni.coordinator.data import DataError, Dataset, load_dataset, missing_files, resolve_data_root, to_float, train_batches
from dni.coordinator.data import test_batches as evaluation_batches  # not collected as a test
from dni import load_job

MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
CIFAR_FILES = "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta"


def synthetic(train: int = 50, test: int = 23) -> Dataset:
    """Images whose first pixel is their index, so every batch says which examples it holds."""
    def images(count: int) -> torch.Tensor:
        x = torch.randint(0, 256, (count, 1, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(count))
        x[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
        return x
    return Dataset("mnist", images(train), torch.arange(train) % 10, images(test), torch.arange(test) % 10)


def indices(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * 255).long().tolist()


def test_a_named_data_root_that_does_not_exist_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("DNI_DATA_ROOT", raising=False)
    missing = tmp_path / "typo"
    with pytest.raises(DataError) as error:
        load_job("mnist", {"data_root": str(missing)}).resolved_data_root()
    assert str(error.value) == (
        f"data root {missing} (from --data-root or data_root in the job file) does not exist; point it at the folder "
        "that holds MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, or leave it unset to download mnist into ./data")
    monkeypatch.setenv("DNI_DATA_ROOT", str(missing))
    with pytest.raises(DataError, match=f"^data root {missing} \\(from DNI_DATA_ROOT\\) does not exist; .*cifar-10-batches-py/"):
        resolve_data_root("", "cifar10")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is not a folder"):
        resolve_data_root(str(tmp_path / "file"), "mnist")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]
    assert resolve_data_root(str(tmp_path), "mnist") == tmp_path
    monkeypatch.delenv("DNI_DATA_ROOT")
    assert resolve_data_root("", "mnist") == Path("data")  # the default is created by a download


def test_missing_dataset_without_downloads_names_the_files_and_the_flags(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path, download=False)
    assert str(error.value) == (
        f"mnist not found: {tmp_path}/MNIST/raw should hold {MNIST_FILES}. Point --data-root or DNI_DATA_ROOT at the "
        "folder that holds MNIST/raw/, or let dni download mnist: drop --no-download (or download = false in the job file)")
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match=r"should hold .* \(train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte missing\)"):
        load_dataset("mnist", tmp_path, download=False)
    assert [path.name for path in (tmp_path / "MNIST" / "raw").iterdir()] == ["train-images-idx3-ubyte"], "nothing created"


def test_missing_cifar_gets_no_checksum_advice(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path, download=False, verify=True)
    assert str(error.value) == (
        f"cifar10 not found: {tmp_path}/cifar-10-batches-py should hold {CIFAR_FILES}. Point --data-root or DNI_DATA_ROOT "
        "at the folder that holds cifar-10-batches-py/, or let dni download cifar10: drop --no-download (or download = "
        "false in the job file)")
    with pytest.raises(DataError) as error:  # downloads allowed, but an unverified copy is never downloaded
        load_dataset("cifar10", tmp_path, download=True, verify=False)
    assert str(error.value).endswith("or let dni download the official archive: drop --no-verify-data (or verify_data = "
                                     "false in the job file)")
    assert not list(tmp_path.iterdir())


def test_cifar_files_that_fail_the_checksums_get_the_checksum_advice(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR_FILES.split(", "):
        (folder / name).write_bytes(b"not the official file")
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path, download=False, verify=True)
    assert str(error.value) == (
        f"cifar10 under {tmp_path} fails torchvision's checksums. A local copy rebuilt from other sources (not the "
        "official archive) is read with --no-verify-data (job file: verify_data = false)")
    assert "download=True" not in str(error.value)


def test_training_batches_drop_the_partial_batch_and_reshuffle_every_epoch():
    data = synthetic(train=50)
    batches = list(train_batches(data, 16, seed=3, steps=7))  # 3 batches an epoch: 48 of the 50 examples
    assert [epoch for epoch, _, _ in batches] == [0, 0, 0, 1, 1, 1, 2]
    first, second = ([i for _, x, _ in batches[start:start + 3] for i in indices(x)] for start in (0, 3))
    assert len(set(first)) == len(set(second)) == 48 and first != second
    for _, x, labels in batches:
        assert x.shape == (16, 1, 3, 3) and labels.tolist() == [i % 10 for i in indices(x)]


def test_the_batch_order_depends_only_on_the_seed():
    data = synthetic()
    order = [indices(x) for _, x, _ in train_batches(data, 8, seed=1, steps=12)]
    assert order == [indices(x) for _, x, _ in train_batches(data, 8, seed=1, steps=12)]
    assert order != [indices(x) for _, x, _ in train_batches(data, 8, seed=2, steps=12)]


def test_a_run_resumed_at_a_step_sees_the_batches_it_would_have_seen():
    data = synthetic()
    whole = [(epoch, indices(x)) for epoch, x, _ in train_batches(data, 8, seed=0, steps=20)]
    assert [(epoch, indices(x)) for epoch, x, _ in train_batches(data, 8, seed=0, steps=20, start=13)] == whole[13:]


def test_a_dataset_smaller_than_a_batch_still_gives_one_batch_a_step():
    batches = list(train_batches(synthetic(train=5), 8, seed=0, steps=3))
    assert [(epoch, len(labels)) for epoch, _, labels in batches] == [(0, 5), (1, 5), (2, 5)]


def test_test_batches_cover_the_test_set_in_order_with_a_short_last_batch():
    data = synthetic(test=23)
    batches = evaluation_batches(data, 10)
    assert [indices(x) for x, _ in batches] == [list(range(0, 10)), list(range(10, 20)), [20, 21, 22]]
    assert [labels.tolist() for _, labels in batches][2] == [0, 1, 2]


def test_pixels_become_floats_in_zero_to_one():
    pixels = to_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
    assert pixels.dtype == torch.float32 and pixels.tolist() == [0.0, pytest.approx(0.2, abs=1e-7), 1.0]


def test_a_subset_keeps_the_first_examples_and_zero_means_all():
    data = synthetic(train=50, test=23)
    small = data.subset(10, 0)
    assert (len(small.train_y), len(small.test_y), small.input_shape, small.num_classes) == (10, 23, (1, 3, 3), 10)
    assert indices(to_float(small.train_x)) == list(range(10))


def test_missing_files_accepts_the_legacy_mnist_layout(tmp_path):
    assert missing_files("mnist", tmp_path) == [f"MNIST/raw/{name}" for name in MNIST_FILES.split(", ")]
    (tmp_path / "MNIST" / "processed").mkdir(parents=True)
    for name in ("training.pt", "test.pt"):
        (tmp_path / "MNIST" / "processed" / name).write_bytes(b"")
    assert missing_files("mnist", tmp_path) == []
