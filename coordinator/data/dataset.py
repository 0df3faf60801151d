"""The data source: whole datasets held as they came (uint8 or floating), normalised once, cut into seeded batches.

The built-in datasets load through torchvision, so real users get its downloads and
checksums; `verify=False` is the explicit way to read a local copy whose checksums
differ from the official archive (such as a rebuilt CIFAR-10, or files a test wrote).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from dni.coordinator.data.normalize import AUTO, Normalization, Statistics
from dni.errors import DataError
from dni.spec import PixelScaling

__all__ = [
    "BUILTIN_DATASETS", "CHECKED_ON_READ", "DATA_ROOT_ENV", "DEFAULT_DATA_ROOT", "Dataset", "EXPECTED_FILES",
    "EXPECTED_LAYOUT", "MNIST_LEGACY", "load_dataset", "missing_files", "resolve_data_root", "test_batches", "to_float",
    "train_batches",
]

log = logging.getLogger("dni.data")


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8 or floating (N, *example_shape), e.g. (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10
    normalization: Normalization = AUTO

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @functools.cached_property
    def statistics(self) -> Statistics:
        """The normalisation's mean and std, from these training examples where it needs them."""
        return self.normalization.statistics(self.train_x)

    @functools.cached_property
    def train_float(self) -> torch.Tensor:
        """The training examples normalised, converted once (uint8: four times the memory of the bytes; none per batch)."""
        return self.normalization.apply(self.train_x, self.statistics)

    @functools.cached_property
    def test_float(self) -> torch.Tensor:
        """The test examples normalised with the training examples' statistics, converted once."""
        return self.normalization.apply(self.test_x, self.statistics)

    @functools.cached_property
    def pixels(self) -> Optional[PixelScaling]:
        """How the first stage scales this dataset's uint8 examples, which then travel as they are
        (`train_batches(raw=True)`); None for floating examples, which travel normalised."""
        return self.normalization.pixels(self.statistics) if self.train_x.dtype == torch.uint8 else None

    def subset(self, train: int, test: int) -> "Dataset":
        return replace(self, train_x=self.train_x[:train or None], train_y=self.train_y[:train or None],
                       test_x=self.test_x[:test or None], test_y=self.test_y[:test or None])

    def normalized(self, normalization: Normalization) -> "Dataset":
        """This dataset with `normalization` (checked against its channels) instead of its own."""
        normalization.check_channels(self.input_shape)
        return replace(self, normalization=normalization)


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_LAYOUT = "raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"
EXPECTED_LAYOUT = {
    "mnist": f"MNIST/{IDX_LAYOUT}",
    "fashion_mnist": f"FashionMNIST/{IDX_LAYOUT}",
    "kmnist": f"KMNIST/{IDX_LAYOUT}",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "cifar-100-python/{train,test,meta}",
    "svhn": "svhn/{train,test}_32x32.mat",
}
EXPECTED_FILES = {  # the folder under the data root, and the files torchvision reads there
    "mnist": ("MNIST/raw", IDX_FILES),
    "fashion_mnist": ("FashionMNIST/raw", IDX_FILES),
    "kmnist": ("KMNIST/raw", IDX_FILES),
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{index}" for index in range(1, 6)) + ("test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
    "svhn": ("svhn", ("train_32x32.mat", "test_32x32.mat")),
}
BUILTIN_DATASETS = tuple(EXPECTED_FILES)
Loader = Callable[[Path, bool, bool], Dataset]  # (root, download, verify)
CHECKED_ON_READ = ("cifar10", "cifar100", "svhn")  # torchvision checksums these whenever it reads them, so verify matters
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
        if dataset not in EXPECTED_LAYOUT:
            raise DataError(f"data root {root} (from {source}) {problem}; point it at the folder the dataset plug-in "
                            f"{dataset} reads, or leave it unset")
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
    """The built-in dataset from `root`, downloaded there first when missing and `download` (for those
    checksummed on read, CHECKED_ON_READ: and `verify`)."""
    missing = missing_files(name, root)
    downloads = download and (verify or name not in CHECKED_ON_READ)  # an unverified copy is never downloaded
    if missing and not downloads:
        raise DataError(_not_found(name, root, missing, download))
    try:
        return _LOADERS[name](root, download, verify)
    except (RuntimeError, OSError) as error:
        if isinstance(error, DataError):
            raise
        if name in CHECKED_ON_READ and verify and not missing_files(name, root):
            failed = f", and a fresh download failed ({_plain(error)})" if download else ""
            raise DataError(
                f"{name} under {root} fails torchvision's checksums{failed}. A local copy rebuilt from other sources "
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


def _idx(kind_name: str, name: str) -> Loader:
    """A loader for one of torchvision's MNIST-format datasets (idx-ubyte files; torchvision checks no checksum on read)."""
    def load(root: Path, download: bool, verify: bool) -> Dataset:
        import torchvision.datasets

        kind = getattr(torchvision.datasets, kind_name)
        train, test = (kind(str(root), train=flag, download=download) for flag in (True, False))
        return Dataset(name, train.data[:, None].contiguous(), train.targets.long(), test.data[:, None].contiguous(),
                       test.targets.long())
    return load


def _cifar(kind_name: str, name: str, num_classes: int) -> Loader:
    """A loader for CIFAR-10 or CIFAR-100 (pickled batches); `verify=False` reads files whose checksums differ."""
    def load(root: Path, download: bool, verify: bool) -> Dataset:
        import torchvision.datasets

        checked = getattr(torchvision.datasets, kind_name)

        class Unchecked(checked):  # type: ignore[valid-type, misc]
            def _check_integrity(self) -> bool:
                return not missing_files(name, Path(self.root))

            def _load_meta(self) -> None:
                with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
                    self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]

        if not verify:
            log.warning("%s checksums are not verified (verify_data = false)", name)
        kind = checked if verify else Unchecked
        train, test = (kind(str(root), train=flag, download=download and verify) for flag in (True, False))

        def tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets, dtype=torch.int64)

        return Dataset(name, *tensors(train), *tensors(test), num_classes=num_classes)
    return load


def _svhn(root: Path, download: bool, verify: bool) -> Dataset:
    """SVHN's cropped digits from svhn/ under the root; torchvision reads its .mat files with scipy and maps label 10 to 0."""
    from torchvision.datasets import SVHN

    if importlib.util.find_spec("scipy") is None:
        raise DataError("svhn needs scipy to read its .mat files, and scipy is not installed: pip install scipy")

    class UncheckedSVHN(SVHN):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.filename).is_file()

    if not verify:
        log.warning("svhn checksums are not verified (verify_data = false)")
    kind = SVHN if verify else UncheckedSVHN
    folder = str(root / EXPECTED_FILES["svhn"][0])
    train, test = (kind(folder, split=split, download=download and verify) for split in ("train", "test"))
    return Dataset("svhn", torch.from_numpy(train.data).contiguous(), torch.from_numpy(train.labels),
                   torch.from_numpy(test.data).contiguous(), torch.from_numpy(test.labels))


_LOADERS: dict[str, Loader] = {
    "mnist": _idx("MNIST", "mnist"), "fashion_mnist": _idx("FashionMNIST", "fashion_mnist"), "kmnist": _idx("KMNIST", "kmnist"),
    "cifar10": _cifar("CIFAR10", "cifar10", 10), "cifar100": _cifar("CIFAR100", "cifar100", 100), "svhn": _svhn,
}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1], as in the reference experiment."""
    return images.float().div_(255.0)


def train_batches(data: Dataset, batch_size: int, seed: int, steps: int, start: int = 0,
                  raw: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch, images, labels) for batches start..steps-1; reshuffled each epoch, the last partial batch dropped.

    The order depends only on the seed, so a run resumed at `start` sees the batches it would have seen.
    `raw`: images as they travel to the first stage, uint8 where the dataset has `pixels` (a quarter of the
    bytes, scaled there), else normalised floats as without it.
    """
    examples = _examples(data, "train", raw)
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
                yield epoch, examples.index_select(0, index), data.train_y.index_select(0, index)
            step += 1
        epoch += 1


def test_batches(data: Dataset, batch_size: int, raw: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The test set in order, the last batch short; `raw` as for `train_batches`."""
    examples = _examples(data, "test", raw)
    return [(examples[start:start + batch_size], data.test_y[start:start + batch_size])
            for start in range(0, len(data.test_y), batch_size)]


def _examples(data: Dataset, split: str, raw: bool) -> torch.Tensor:
    """A split's examples as they are sent: uint8 when `raw` and the first stage scales them, else normalised."""
    if raw and data.pixels is not None:
        return data.train_x if split == "train" else data.test_x
    return data.train_float if split == "train" else data.test_float
