"""The GPU run's luggage: every file it needs, in one git-ignored folder that travels with the working tree.

The GPU machine has no datasets and no pyzmq, and what travels is capped at
64 MiB, so the folder holds MNIST gzipped (unpacked there by `unpack`), a
slice of CIFAR-10 (its first training batch of 10,000 images and the first
2,000 test images) and a cp312 pyzmq wheel. The folder is itself a dataset
root in torchvision's layout: the four other CIFAR-10 training batches are
present but empty, so the slice loads through the same code as the full set.
"""
from __future__ import annotations

import gzip
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["prepare", "unpack", "CIFAR_TRAIN_IMAGES", "CIFAR_TEST_IMAGES"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_IMAGES = 10_000  # data_batch_1, whole
CIFAR_TEST_IMAGES = 2_000
PAYLOAD_LIMIT = 60 << 20  # of the 64 MiB that travel; the rest is the working tree
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def prepare(payload: Path, data_root: Path, wheel: bool = True) -> int:
    """Fill `payload` from `data_root` (and PyPI, for the wheel); returns its size in bytes."""
    payload.mkdir(parents=True, exist_ok=True)
    _pack_mnist(data_root / "MNIST" / "raw", payload / "MNIST" / "raw")
    _slice_cifar(data_root / CIFAR_FOLDER, payload / CIFAR_FOLDER)
    if wheel:
        _download_pyzmq(payload / "wheels")
    size = sum(path.stat().st_size for path in payload.rglob("*") if path.is_file() and not _unpacked(path))
    if size > PAYLOAD_LIMIT:
        raise RuntimeError(f"{payload} holds {size / 2**20:.1f} MiB, more than the {PAYLOAD_LIMIT >> 20} MiB that may travel")
    return size


def unpack(payload: Path) -> Path:
    """Make `payload` a dataset root (gunzip MNIST where that has not happened yet); returns it."""
    raw = payload / "MNIST" / "raw"
    for name in MNIST_FILES:
        target = raw / name
        if not target.is_file():
            with gzip.open(raw / f"{name}.gz") as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
    return payload


def _unpacked(path: Path) -> bool:
    return path.parent.name == "raw" and path.name in MNIST_FILES


def _pack_mnist(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        packed = source / f"{name}.gz"
        if packed.is_file():
            shutil.copyfile(packed, target / packed.name)
            continue
        with (source / name).open("rb") as raw, gzip.open(target / f"{name}.gz", "wb", compresslevel=6) as sink:
            shutil.copyfileobj(raw, sink)


def _slice_cifar(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "batches.meta", target / "batches.meta")
    shutil.copyfile(source / "data_batch_1", target / "data_batch_1")
    empty = {"data": np.zeros((0, 3 * 32 * 32), dtype=np.uint8), "labels": []}
    for index in range(2, 6):
        _write_batch(target / f"data_batch_{index}", empty)
    test = _read_batch(source / "test_batch")
    _write_batch(target / "test_batch", {"data": test["data"][:CIFAR_TEST_IMAGES], "labels": list(test["labels"][:CIFAR_TEST_IMAGES])})


def _read_batch(path: Path) -> dict:
    """A CIFAR-10 batch file (the dataset's own pickle format, read as torchvision reads it)."""
    with path.open("rb") as stream:
        return pickle.load(stream, encoding="latin1")


def _write_batch(path: Path, batch: dict) -> None:
    with path.open("wb") as stream:
        pickle.dump(batch, stream, protocol=4)


def _download_pyzmq(target: Path) -> None:
    """A pyzmq wheel for the GPU machine's CPython 3.12 on x86-64, whatever this machine runs."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("pyzmq-*.whl"):
        old.unlink()
    platforms = [flag for platform in WHEEL_PLATFORMS for flag in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "--dest", str(target), "pyzmq"],
                   check=True)
