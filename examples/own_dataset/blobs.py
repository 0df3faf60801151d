"""An example dni dataset plug-in: Gaussian blobs, a small synthetic classification task.

dni calls `blobs(root)` once, in the coordinator, before any worker starts; it returns
`((x_train, y_train), (x_test, y_test))` as numpy arrays: x float32 (N, 16), y int64
class labels 0..3. The data is drawn from a fixed seed, so every call returns the same
arrays; `root` (the job's data root) is not read, since nothing comes from disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["blobs"]

FEATURES = 16
CLASSES = 4
TRAIN, TEST = 4000, 1000
NOISE = 2.0  # per feature, around centres drawn N(0, 1) per feature (about 5.7 apart): the blobs overlap a little


def blobs(root: Path, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(CLASSES, FEATURES))

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = generator.integers(0, CLASSES, size=count)
        x = centres[labels] + generator.normal(scale=NOISE, size=(count, FEATURES))
        return x.astype(np.float32), labels.astype(np.int64)

    return split(TRAIN), split(TEST)
