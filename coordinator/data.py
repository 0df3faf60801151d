"""The data source: whole datasets held as uint8 tensors, cut into seeded batches.

Loading goes through torchvision, so real users get its downloads and
checksums; `verify=False` is the explicit way to read a local copy whose
checksums differ from the official archive (such as a rebuilt CIFAR-10).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from dni.errors import DataError

__all__ = [
    "DATA_ROOT_ENV", "DEFAULT_DATA_ROOT", "Dataset", "EXPECTED_FILES", "EXPECTED_LAYOUT", "MNIST_LEGACY",
    "load_dataset", "missing_files", "resolve_data_root", "test_batches", "to_float", "train_batches",
]

log = logging.getLogger("dni.data")


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @functools.cached_property
    def train_float(self) -> torch.Tensor:
        """The training images in [0, 1], converted once (four times the memory of the bytes, none per batch)."""
        return to_float(self.train_x)

    def subset(self, train: int, test: int) -> "Dataset":
        return Dataset(self.name, self.train_x[:train or None], self.train_y[:train or None],
                       self.test_x[:test or None], self.test_y[:test or None], self.num_classes)


EXPECTED_LAYOUT = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
}
EXPECTED_FILES = {  # the folder under the data root, and the files torchvision reads there
    "mnist": ("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{index}" for index in range(1, 6)) + ("test_batch", "batches.meta")),
}
MNIST_LEGACY = ("MNIST/processed/training.pt", "MNIST/processed/test.pt")  # an old torchvision layout it still reads
DEFAULT_DATA_ROOT = Path("data")
DATA_ROOT_ENV = "DNI_DATA_ROOT"


def resolve_data_root(setting: str, dataset: str) -> Path:
    """The data root: `setting` (--data-root or the job's data_root), else $DNI_DATA_ROOT, else ./data.

    Only ./data is created (by a download); a root the user named must exist, so that a typo
    fails here instead of becoming a new folder with a download in it.
    """
    environment = os.environ.get(DATA_ROOT_ENV, "")
    if not setting and not environment:
        return DEFAULT_DATA_ROOT
    root, source = (Path(setting), "--data-root or data_root in the job file") if setting else (Path(environment), DATA_ROOT_ENV)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data root {root} (from {source}) {problem}; point it at the folder that holds "
                        f"{EXPECTED_LAYOUT[dataset]}, or leave it unset to download {dataset} into ./{DEFAULT_DATA_ROOT}")
    return root


def missing_files(name: str, root: Path) -> list[str]:
    """The dataset's files that are not under `root` (empty when torchvision has all it reads)."""
    folder, files = EXPECTED_FILES[name]
    if name == "mnist" and all((root / legacy).is_file() for legacy in MNIST_LEGACY):
        return []
    return [f"{folder}/{file}" for file in files if not (root / folder / file).is_file()]


def load_dataset(name: str, root: Path, download: bool = True, verify: bool = True) -> Dataset:
    """The dataset from `root`, downloaded there first when missing and `download` (CIFAR-10: and `verify`)."""
    missing = missing_files(name, root)
    downloads = download and (verify or name != "cifar10")  # an unverified copy is never downloaded
    if missing and not downloads:
        raise DataError(_not_found(name, root, missing, download))
    try:
        return _LOADERS[name](root, download, verify)
    except (RuntimeError, OSError) as error:
        if isinstance(error, DataError):
            raise
        if name == "cifar10" and verify and not missing_files(name, root):
            failed = f", and a fresh download failed ({_plain(error)})" if download else ""
            raise DataError(
                f"cifar10 under {root} fails torchvision's checksums{failed}. A local copy rebuilt from other sources "
                f"(not the official archive) is read with --no-verify-data (job file: verify_data = false)"
            ) from error
        raise DataError(
            f"cannot load {name} under {root}: {_plain(error)}. Expected {root}/{EXPECTED_LAYOUT[name]}; point "
            f"--data-root or {DATA_ROOT_ENV} at a local copy, or download it with network access"
        ) from error


def _not_found(name: str, root: Path, missing: list[str], download: bool) -> str:
    folder, files = EXPECTED_FILES[name]
    absent = "" if len(missing) == len(files) else f" ({', '.join(path.rpartition('/')[2] for path in missing)} missing)"
    fix = ("let dni download the official archive: drop --no-verify-data (or verify_data = false in the job file)" if download
           else f"let dni download {name}: drop --no-download (or download = false in the job file)")
    return (f"{name} not found: {root / folder} should hold {', '.join(files)}{absent}. Point --data-root or "
            f"{DATA_ROOT_ENV} at the folder that holds {folder}/, or {fix}")


def _plain(error: BaseException) -> str:
    """torchvision's message without its advice to pass download=True, which is not a dni option."""
    return str(error).replace(" You can use download=True to download it", "").strip() or type(error).__name__


def _mnist(root: Path, download: bool, verify: bool) -> Dataset:
    from torchvision.datasets import MNIST

    train, test = (MNIST(str(root), train=flag, download=download) for flag in (True, False))
    return Dataset("mnist", train.data[:, None].contiguous(), train.targets.long(), test.data[:, None].contiguous(), test.targets.long())


def _cifar10(root: Path, download: bool, verify: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.base_folder / "batches.meta").is_file()

    if not verify:
        log.warning("CIFAR-10 checksums are not verified (verify_data = false)")
    kind = CIFAR10 if verify else UncheckedCIFAR10
    train, test = (kind(str(root), train=flag, download=download and verify) for flag in (True, False))

    def tensors(split: CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets, dtype=torch.int64)

    return Dataset("cifar10", *tensors(train), *tensors(test))


_LOADERS = {"mnist": _mnist, "cifar10": _cifar10}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1], as in the reference experiment."""
    return images.float().div_(255.0)


def train_batches(data: Dataset, batch_size: int, seed: int, steps: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch, images, labels) for batches start..steps-1; reshuffled each epoch, the last partial batch dropped.

    The order depends only on the seed, so a run resumed at `start` sees the batches it would have seen.
    """
    generator = torch.Generator().manual_seed(seed)
    per_epoch = max(1, len(data.train_y) // batch_size)
    step = 0
    epoch = 0
    while step < steps:
        order = torch.randperm(len(data.train_y), generator=generator)
        for offset in range(0, per_epoch * batch_size, batch_size):
            if step == steps:
                return
            if step >= start:
                index = order[offset:offset + batch_size]  # index_select: a tenth of the time of x[index]
                yield epoch, data.train_float.index_select(0, index), data.train_y.index_select(0, index)
            step += 1
        epoch += 1


def test_batches(data: Dataset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(to_float(data.test_x[start:start + batch_size]), data.test_y[start:start + batch_size])
            for start in range(0, len(data.test_y), batch_size)]
