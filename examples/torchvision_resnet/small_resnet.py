"""A small ResNet for CIFAR-10 from torchvision's BasicBlock, as the nn.Sequential a dni job splits into stages.

`make()` is what a job names (`model = "small_resnet:make"`): a stem, three
residual stages (the last two halve the resolution and double the width), and
a head of pooling, flattening and the classifier. Each of the five is one child,
so `split` or `stages = N` cuts between them.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = ["WIDTH", "make"]

WIDTH = 16


def make() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU(inplace=True)),
        BasicBlock(WIDTH, WIDTH),
        _down(WIDTH, 2 * WIDTH),
        _down(2 * WIDTH, 4 * WIDTH),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * WIDTH, 10)),
    )


def _down(inplanes: int, planes: int) -> BasicBlock:
    """A block that halves the resolution, its shortcut a strided 1x1 convolution as in torchvision's ResNets."""
    shortcut = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm2d(planes))
    return BasicBlock(inplanes, planes, stride=2, downsample=shortcut)
