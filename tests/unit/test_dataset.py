"""coordinator/data/dataset.py: finding the datasets (a named root must exist; a missing dataset gets dni's advice, not
torchvision's) and cutting a dataset into seeded training batches and in-order test batches, on a small synthetic one."""
from __future__ import annotations

import pickle
from importlib.util import find_spec
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dni.coordinator.data.dataset import DataError, Dataset, load_dataset, missing_files, resolve_data_root, to_float, train_batches
from dni.coordinator.data.dataset import test_batches as evaluation_batches  # not collected as a test
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


def write_idx(root: Path, folder: str, train: int = 6, test: int = 4) -> None:
    """MNIST-format files as torchvision keeps them: big-endian idx headers, then the bytes."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = (np.arange(count * 28 * 28) % 256).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + (np.arange(count) % 10).astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST"), ("mnist", "MNIST")])
def test_the_mnist_format_datasets_load_from_torchvisions_layout(name, folder, tmp_path):
    write_idx(tmp_path, folder)
    data = load_dataset(name, tmp_path, download=False, verify=False)
    assert (data.name, data.input_shape, data.num_classes, len(data.train_y), len(data.test_y)) == (name, (1, 28, 28), 10, 6, 4)
    assert data.train_x.dtype == torch.uint8 and data.train_x[0, 0, 0, :3].tolist() == [0, 1, 2]
    assert data.train_y.tolist() == [0, 1, 2, 3, 4, 5] and data.test_y.dtype == torch.int64


def test_cifar100_loads_its_pickled_batches_unverified_with_a_hundred_classes(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, count in (("train", 5), ("test", 3)):
        data = (np.arange(count * 3072) % 256).astype(np.uint8).reshape(count, 3072)
        (folder / split).write_bytes(pickle.dumps({"data": data, "fine_labels": [99 - index for index in range(count)]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{index}" for index in range(100)]}))
    data = load_dataset("cifar100", tmp_path, download=False, verify=False)
    assert (data.input_shape, data.num_classes, data.train_y.tolist(), data.test_y.tolist()) == ((3, 32, 32), 100, [99, 98, 97, 96, 95], [99, 98, 97])
    assert data.train_x[0, 0, 0, :2].tolist() == [0, 1] and data.train_x[0, 1, 0, 0] == 1024 % 256, "channels first"
    with pytest.raises(DataError) as error:
        load_dataset("cifar100", tmp_path, download=False, verify=True)
    assert str(error.value) == (f"cifar100 under {tmp_path} fails torchvision's checksums. A local copy rebuilt from other "
                                "sources (not the official archive) is read with --no-verify-data (job file: verify_data = false)")


def test_svhn_loads_its_mat_files_unverified_with_label_ten_as_zero(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="torchvision reads SVHN's .mat files with scipy")
    (tmp_path / "svhn").mkdir()
    for split, labels in (("train", [10, 1, 9, 10]), ("test", [3, 10])):
        x = np.zeros((32, 32, 3, len(labels)), dtype=np.uint8)
        x[0, 1, 2, :] = np.arange(len(labels)) + 7  # row 0, column 1, channel 2 of each example
        scipy_io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": np.array(labels, dtype=np.uint8)[:, None]})
    data = load_dataset("svhn", tmp_path, download=False, verify=False)
    assert (data.input_shape, data.num_classes, data.train_y.tolist(), data.test_y.tolist()) == ((3, 32, 32), 10, [0, 1, 9, 0], [3, 0])
    assert data.train_x[:, 2, 0, 1].tolist() == [7, 8, 9, 10] and data.train_x.dtype == torch.uint8


@pytest.mark.parametrize("name, folder, files", [
    ("fashion_mnist", "FashionMNIST/raw", MNIST_FILES), ("kmnist", "KMNIST/raw", MNIST_FILES),
    ("cifar100", "cifar-100-python", "train, test, meta"), ("svhn", "svhn", "train_32x32.mat, test_32x32.mat"),
])
def test_every_builtin_dataset_that_is_missing_names_its_files(name, folder, files, tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset(name, tmp_path, download=False)
    assert str(error.value) == (
        f"{name} not found: {tmp_path}/{folder} should hold {files}. Point --data-root or DNI_DATA_ROOT at the folder that "
        f"holds {folder}/, or let dni download {name}: drop --no-download (or download = false in the job file)")
    assert not list(tmp_path.iterdir())


def test_a_missing_data_root_for_a_plugin_gives_plugin_advice(tmp_path):
    with pytest.raises(DataError) as error:
        resolve_data_root(str(tmp_path / "typo"), "blobs:blobs")
    assert str(error.value) == (f"data root {tmp_path / 'typo'} (from --data-root or data_root in the job file) does not "
                                "exist; point it at the folder the dataset plug-in blobs:blobs reads, or leave it unset")


def test_svhn_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "svhn").mkdir()
    for split in ("train", "test"):
        (tmp_path / "svhn" / f"{split}_32x32.mat").write_bytes(b"")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None if name == "scipy" else find_spec(name, *args))
    with pytest.raises(DataError) as error:
        load_dataset("svhn", tmp_path, download=False, verify=False)
    assert str(error.value) == "svhn needs scipy to read its .mat files, and scipy is not installed: pip install scipy"
