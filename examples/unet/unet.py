"""A small U-Net that classifies generated shapes: a model whose skip connection crosses two cuts.

`make()` (the job's `model = "unet:make"`) encodes a 16x16 image (`enc1`), goes down
to 8x8 (`down`), works there (`bottom`), comes back up and joins the full-resolution
features of `enc1` (the skip) before a decoder and a classifier. Cut after `enc1`,
`down` and `bottom`, the skip is made by the first stage and used by the last: dni
sends it along an edge of its own, straight from stage 0 to stage 3.

`shapes(root)` is the dataset (the job's `dataset = "unet:shapes"`): 16x16 images of
one of four shapes (a horizontal bar, a vertical bar, a hollow square, a cross) at
a random place, in noise; the label says which. It is generated from a fixed seed,
so every call returns the same arrays; `root` is not read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["CLASSES", "SIZE", "UNet", "make", "shapes"]

SIZE = 16
CLASSES = 4
TRAIN, TEST = 4000, 1000
NOISE = 0.5


def _conv(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = CLASSES) -> None:
        super().__init__()
        self.enc1 = _conv(1, width)
        self.down = nn.Sequential(nn.MaxPool2d(2), _conv(width, 2 * width))
        self.bottom = _conv(2 * width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = _conv(2 * width, width)
        self.classify = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(x)
        deep = self.bottom(self.down(skip))
        return self.classify(self.dec(torch.cat([self.up(deep), skip], dim=1)))


def make() -> UNet:
    return UNet()


def shapes(root: Path, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    generator = np.random.default_rng(seed)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = generator.integers(0, CLASSES, size=count)
        images = generator.normal(scale=NOISE, size=(count, 1, SIZE, SIZE)).astype(np.float32)
        for image, label, (row, column) in zip(images, labels, generator.integers(2, SIZE - 7, size=(count, 2))):
            _draw(image[0], int(label), int(row), int(column))
        return images, labels.astype(np.int64)

    return draw(TRAIN), draw(TEST)


def _draw(image: np.ndarray, shape: int, row: int, column: int) -> None:
    """Shape `shape` with its 6x6 box's corner at (row, column)."""
    box = image[row:row + 6, column:column + 6]
    if shape == 0:
        box[2:4, :] += 1.0
    elif shape == 1:
        box[:, 2:4] += 1.0
    elif shape == 2:
        box[[0, -1], :] += 1.0
        box[1:-1, [0, -1]] += 1.0
    else:
        box[2:4, :] += 1.0
        box[[0, 1, 4, 5], 2:4] += 1.0
