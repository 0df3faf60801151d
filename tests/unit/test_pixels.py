"""workers/loop/pixels.py: uint8 pixels scaled by the first stage equal, bit for bit, the floats the coordinator made of
them; uint8 is taken only where the stage's assignment says how to scale it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dni.coordinator.data.dataset import Dataset, train_batches
from dni.coordinator.data.dataset import test_batches as evaluation_batches  # not collected as a test
from dni.coordinator.data.normalize import check_normalize
from dni.errors import ConfigError
from dni.workers.loop.pixels import as_floats, scale
from dni.workers.loop.validation import Rejected, check_batch
from dni.protocol import Kind, Message, decode, encode
from dni.spec import Mode, OptimizerSpec, PixelScaling, StageAssignment, StageSpec
from dni.testing import chain_edges

NORMALIZATIONS = ["auto", "standardize", "none", [[0.25, 0.5, 0.75], [0.2, 0.3, 0.4]]]


def images(count: int = 48, seed: int = 0) -> Dataset:
    """Three-channel uint8 images whose pixels take every value 0..255 (and channels of different statistics)."""
    generator = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (count, 3, 5, 4), dtype=torch.uint8, generator=generator)
    train[0].view(-1)[:256 - 196] = torch.arange(196, 256, dtype=torch.uint8)
    train[1].view(-1)[:60] = torch.arange(0, 60, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return Dataset("cifar10", train, labels, train[: count // 4].flip(0).contiguous(), labels[: count // 4])


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (torch.equal would take -0.0 for 0.0)."""
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def first_stage(pixels: PixelScaling | None, index: int = 0, shape: tuple[int, ...] = (3, 5, 4)) -> StageAssignment:
    return StageAssignment(job="unit", index=index, num_stages=2, spec=StageSpec("linear", {"features": 4}), mode=Mode.SG,
                           input_shape=shape, num_classes=10, optimizer=OptimizerSpec(), seed=0, window=1, threads=1,
                           coordinator="ipc:///c", **chain_edges(index, shape, "ipc:///u" if index else None, None if index else "ipc:///d"),
                           pixels=pixels)


def batch(x: np.ndarray, labels: np.ndarray, kind: Kind = Kind.FORWARD) -> Message:
    """A batch as the worker receives it: through the codec."""
    return decode(encode(Message(kind, "unit", 0, 0, -1, {}, {"x": x, "labels": labels})))


def checked_inputs(message: Message, config: StageAssignment):
    """What the first stage takes of a batch: checked, then its pixels as floats."""
    batch = check_batch(message, config)
    return batch._replace(x=as_floats(batch.x, config.pixels))


@pytest.mark.parametrize("normalize", NORMALIZATIONS, ids=["auto", "standardize", "none", "explicit"])
def test_scaled_pixels_are_the_coordinators_floats_bit_for_bit(normalize):
    data = images().normalized(check_normalize(normalize))
    assert data.pixels is not None
    for (_, raw, raw_labels), (_, floats, labels) in zip(train_batches(data, 8, 3, 12, raw=True), train_batches(data, 8, 3, 12)):
        assert raw.dtype == torch.uint8 and torch.equal(raw_labels, labels)
        assert identical(scale(raw, data.pixels), floats)
    for (raw, _), (floats, _) in zip(evaluation_batches(data, 5, raw=True), evaluation_batches(data, 5)):
        assert identical(scale(raw, data.pixels), floats)


def test_every_pixel_value_scales_to_its_float_exactly():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert identical(scale(values, PixelScaling()), values.float() / 255)
    assert identical(scale(values, PixelScaling(divide=False)), values.float())


def test_the_statistics_travel_exactly_through_a_configure_request():
    data = images().normalized(check_normalize("standardize"))
    assert data.pixels is not None
    sent = first_stage(data.pixels)
    received = StageAssignment.from_wire(decode(encode(Message(Kind.CONTROL, "unit", meta={"config": sent.to_wire()}))).meta["config"])
    assert received.pixels == data.pixels
    assert data.statistics is not None and torch.equal(torch.tensor(received.pixels.mean).view(1, -1, 1, 1), data.statistics[0])


def test_float_examples_travel_as_floats():
    data = images()
    floats = replace(data, train_x=data.train_x.float(), test_x=data.test_x.float())
    assert floats.pixels is None
    (_, x, _), = train_batches(floats, 8, 0, 1, raw=True)
    assert x.dtype == torch.float32


def test_the_first_stage_takes_pixels_as_the_floats_they_stand_for():
    data = images()
    (_, raw, labels), = train_batches(data, 8, 0, 1, raw=True)
    (_, floats, _), = train_batches(data, 8, 0, 1)
    for kind in (Kind.FORWARD, Kind.EVAL):
        inputs = checked_inputs(batch(raw.numpy(), labels.numpy(), kind), first_stage(data.pixels))
        assert inputs.x.dtype == np.float32 and identical(torch.from_numpy(inputs.x), floats) and inputs.nonfinite == 0
        assert np.array_equal(inputs.labels, labels.numpy())


def test_a_stage_not_told_of_pixels_refuses_them_and_takes_floats_as_before():
    data = images()
    (_, raw, labels), = train_batches(data, 8, 0, 1, raw=True)
    (_, floats, _), = train_batches(data, 8, 0, 1)
    with pytest.raises(Rejected, match=r"^x must be float32 \(B, 3, 5, 4\), got uint8 \[8, 3, 5, 4\]$") as refused:
        checked_inputs(batch(raw.numpy(), labels.numpy()), first_stage(None))
    assert refused.value.lost is not None, "the batch is lost, and the coordinator hears of it"
    inputs = checked_inputs(batch(floats.numpy(), labels.numpy()), first_stage(None))
    assert identical(torch.from_numpy(inputs.x), floats)


@pytest.mark.parametrize("x, message", [
    (np.zeros((8, 3, 5, 4), np.float32), r"^x must be uint8 pixels \(B, 3, 5, 4\), got float32 \[8, 3, 5, 4\]$"),
    (np.zeros((8, 60), np.uint8), r"^x must be uint8 pixels \(B, 3, 5, 4\), got uint8 \[8, 60\]$"),
    (np.zeros((0, 3, 5, 4), np.uint8), r"^x must be uint8 pixels \(B, 3, 5, 4\), got uint8 \[0, 3, 5, 4\]$"),
])
def test_a_stage_told_of_pixels_refuses_anything_else(x, message):
    with pytest.raises(Rejected, match=message) as refused:
        checked_inputs(batch(x, np.zeros(len(x), np.int64)), first_stage(PixelScaling()))
    assert refused.value.lost is not None


def test_pixels_with_bad_labels_are_refused_as_floats_would_be():
    with pytest.raises(Rejected, match=r"^labels must lie in 0..9$"):
        checked_inputs(batch(np.zeros((2, 3, 5, 4), np.uint8), np.array([0, 10])), first_stage(PixelScaling()))


def test_only_the_first_stage_of_a_feed_forward_job_is_told_of_pixels():
    with pytest.raises(ConfigError, match="only the first stage of a feed-forward job"):
        first_stage(PixelScaling(), index=1).validate()
    with pytest.raises(ConfigError, match="only the first stage of a feed-forward job"):
        replace(first_stage(PixelScaling()), truncation=4).validate()
    with pytest.raises(ConfigError, match=r"^pixels: 2 means and stds for examples of 3 channels \(shape \[3, 5, 4\]\)$"):
        first_stage(PixelScaling(True, (0.5, 0.5), (1.0, 1.0))).validate()


@pytest.mark.parametrize("pixels", [
    "yes", {"divide": True, "mean": [0.5]}, {"divide": 1, "mean": [], "std": []},
    {"divide": True, "mean": [0.5], "std": [0.0]}, {"divide": True, "mean": [float("nan")], "std": [1.0]},
    {"divide": True, "mean": [0.5, 0.5], "std": [1.0]},
])
def test_a_malformed_pixels_setting_is_refused_on_arrival(pixels):
    with pytest.raises(ConfigError, match="pixels|divide"):
        StageAssignment.from_wire({**first_stage(None).to_wire(), "pixels": pixels})
