"""How examples become the float32 batches workers take: the job key `normalize`, applied once per dataset.

`auto` scales uint8 pixels to [0, 1] and takes floating data as given (the reference
experiment's preprocessing); `standardize` also centres and scales each channel by the
training set's mean and std; `none` keeps the raw values; explicit means and stds are
applied after the [0, 1] scaling of uint8 data, as torchvision's `Normalize` is. The
channel is the first dimension of an example. uint8 examples travel as they are, and the
first stage applies the same operations to each batch (`Normalization.pixels`, `dni.workers.loop.pixels`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from dni.errors import ConfigError, DataError
from dni.spec import PixelScaling

__all__ = ["AUTO", "NORMALIZE_NAMES", "Normalization", "check_normalize"]

NORMALIZE_NAMES = ("auto", "standardize", "none")
EXPLICIT = "explicit"
Statistics = Optional[tuple[torch.Tensor, torch.Tensor]]  # per-channel mean and std, shaped to broadcast over a batch


@dataclass(frozen=True)
class Normalization:
    kind: str = "auto"  # auto | standardize | none | explicit
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def setting(self) -> Any:
        """The job-file form, which check_normalize reads back."""
        return {"mean": list(self.mean), "std": list(self.std)} if self.kind == EXPLICIT else self.kind

    def check_channels(self, example_shape: tuple[int, ...]) -> None:
        """Explicit statistics must give one mean and one std per channel of the examples."""
        if self.kind == EXPLICIT and len(self.mean) != example_shape[0]:
            raise DataError(f"normalize gives {len(self.mean)} means and stds, but the examples have {example_shape[0]} "
                            f"channels (shape {list(example_shape)}; the channel is the first dimension)")

    def statistics(self, train_x: torch.Tensor) -> Statistics:
        """The mean and std to apply, from the training examples for `standardize` (a constant channel keeps std 1)."""
        broadcast = (1, -1) + (1,) * (train_x.dim() - 2)
        if self.kind == EXPLICIT:
            return torch.tensor(self.mean).view(broadcast), torch.tensor(self.std).view(broadcast)
        if self.kind != "standardize":
            return None
        scaled = self._scaled(train_x, copy=False)
        dims = [0, *range(2, scaled.dim())]
        mean, std = scaled.mean(dim=dims), scaled.std(dim=dims, correction=0)
        return mean.view(broadcast), torch.where(std > 0, std, torch.ones_like(std)).view(broadcast)

    def apply(self, x: torch.Tensor, statistics: Statistics) -> torch.Tensor:
        """`x` as float32 batches-to-be; `statistics` from `self.statistics` of the training examples."""
        if statistics is None:
            return self._scaled(x, copy=False)
        mean, std = statistics
        return self._scaled(x, copy=True).sub_(mean).div_(std)

    def pixels(self, statistics: Statistics) -> PixelScaling:
        """What `apply` does to uint8 examples, for the first stage to do to the uint8 batches it is sent instead
        (`dni.workers.loop.pixels.scale`); statistics travel as Python floats, which hold float32 values exactly."""
        mean, std = ((), ()) if statistics is None else (tuple(statistics[0].flatten().tolist()),
                                                          tuple(statistics[1].flatten().tolist()))
        return PixelScaling(divide=self.kind != "none", mean=mean, std=std)

    def _scaled(self, x: torch.Tensor, copy: bool) -> torch.Tensor:
        """float32; uint8 scaled to [0, 1] unless `none`. Never `x` itself when `copy`, so in-place steps leave it alone."""
        if x.dtype == torch.uint8 and self.kind != "none":
            return x.float().div_(255.0)
        return x.to(torch.float32, copy=copy)


AUTO = Normalization()


def check_normalize(value: Any) -> Normalization:
    """The job's `normalize`: a name, `[[mean...], [std...]]`, or `{mean = [...], std = [...]}`."""
    if isinstance(value, str):
        if value not in NORMALIZE_NAMES:
            raise ConfigError(f"normalize {value!r} is not one of {', '.join(NORMALIZE_NAMES)} (or [[mean...], [std...]])")
        return Normalization(value)
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
    elif isinstance(value, list) and len(value) == 2:
        mean, std = value
    else:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_NAMES)}, [[mean...], [std...]] or "
                          f"{{mean = [...], std = [...]}}, got {value!r:.60}")
    means, stds = _numbers("mean", mean), _numbers("std", std)
    if len(means) != len(stds):
        raise ConfigError(f"normalize gives {len(means)} means but {len(stds)} stds; give one of each per channel")
    if not all(deviation > 0 for deviation in stds):
        raise ConfigError(f"normalize: every std must be greater than 0, got {list(stds)}")
    return Normalization(EXPLICIT, means, stds)


def _numbers(name: str, values: Any) -> tuple[float, ...]:
    if not (isinstance(values, list) and values and all(isinstance(value, (int, float)) and not isinstance(value, bool)
                                                        and math.isfinite(value) for value in values)):
        raise ConfigError(f"normalize: {name} must be a list of finite numbers, one per channel, got {values!r:.60}")
    return tuple(float(value) for value in values)
