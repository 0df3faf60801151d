"""torchvision's resnet18 adapted to CIFAR-10's 32x32 images, as any model a dni job cuts by tracing.

`make()` is what a job names (`model = "resnet18:make"`): the ImageNet model with a
3x3 stride-1 first convolution and no max-pool, so the four residual stages see
32, 16, 8 and 4 pixels, and 10 classes. Nothing here knows about dni: the job's
`cut = ["layer1", "layer2", "layer3"]` ends a stage after each of the first three
residual stages, and every residual connection stays inside its stage.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet18

__all__ = ["make"]


def make() -> nn.Module:
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
