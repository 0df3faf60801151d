"""The data source: whole datasets held as uint8 tensors, cut into seeded batches.

Loading goes through torchvision, so real users get its downloads and
checksums; `verify=False` is the explicit way to read a local copy whose
checksums differ from the official archive (such as a rebuilt CIFAR-10).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger("dni.data")


class DataError(RuntimeError):
    """The dataset is not where it should be and cannot be fetched."""


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

    def subset(self, train: int, test: int) -> "Dataset":
        return Dataset(self.name, self.train_x[:train or None], self.train_y[:train or None],
                       self.test_x[:test or None], self.test_y[:test or None], self.num_classes)


EXPECTED_LAYOUT = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
}


def load_dataset(name: str, root: Path, download: bool = True, verify: bool = True) -> Dataset:
    try:
        return _LOADERS[name](root, download, verify)
    except (RuntimeError, OSError) as error:
        if isinstance(error, DataError):
            raise
        hint = " (a local copy rebuilt from other sources fails the checksums: set verify_data = false)" if verify else ""
        raise DataError(
            f"cannot load {name} under {root}: {error}{hint}. Expected {root}/{EXPECTED_LAYOUT[name]}; "
            f"set --data-root or DNI_DATA_ROOT, or allow a download with network access"
        ) from error


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
                index = order[offset:offset + batch_size]
                yield epoch, to_float(data.train_x[index]), data.train_y[index]
            step += 1
        epoch += 1


def test_batches(data: Dataset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(to_float(data.test_x[start:start + batch_size]), data.test_y[start:start + batch_size])
            for start in range(0, len(data.test_y), batch_size)]
