"""Finding the datasets: a named data root must exist, and a missing dataset gets dni's advice, not torchvision's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dni.coordinator.data import DataError, load_dataset, resolve_data_root
from dni.coordinator.job import load_job
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
CIFAR_FILES = "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta"


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


def test_dni_run_with_a_data_root_that_does_not_exist_exits_2_and_creates_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dni", "run", "mnist", "--data-root", str(tmp_path / "nonexistent"),
                             "--results", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert f"ERROR data root {tmp_path / 'nonexistent'} (from --data-root or data_root in the job file) does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir()), "no data folder, no run folder"
