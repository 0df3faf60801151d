"""workers/build/stages.py: the built-in stages have the reference's layers, shapes and Glorot-uniform initialisation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dni.workers.build.stages import BUILTIN_STAGES, conv_bn_relu, glorot_, linear, linear_bn_relu


def test_linear_bn_relu_flattens_and_outputs_non_negative_features():
    module = linear_bn_relu((1, 4, 4), 8)
    assert [type(layer) for layer in module] == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU]
    out = module(torch.randn(5, 1, 4, 4))
    assert out.shape == (5, 8) and bool((out >= 0).all())


def test_linear_is_flatten_and_logits():
    module = linear((2, 3), 10)
    assert [type(layer) for layer in module] == [nn.Flatten, nn.Linear]
    assert module(torch.randn(4, 2, 3)).shape == (4, 10)


def test_weights_start_glorot_uniform_and_biases_at_zero():
    torch.manual_seed(0)
    layer = glorot_(nn.Sequential(nn.Linear(300, 200)))[0]
    bound = math.sqrt(6 / (300 + 200))
    assert not layer.bias.any()
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
    assert not conv_bn_relu((3, 8, 8), 4)[0].bias.any()


@pytest.mark.parametrize("pool, shape", [("none", (6, 9, 9)), ("max", (6, 3, 3)), ("avg", (6, 3, 3))])
def test_conv_keeps_its_size_and_pools_as_asked(pool, shape):
    module = conv_bn_relu((3, 9, 9), 6, kernel=5, pool=pool)
    assert module(torch.randn(2, 3, 9, 9)).shape == (2, *shape)


def test_conv_refuses_flat_input_and_unknown_pools():
    with pytest.raises(ValueError, match=r"^conv_bn_relu needs \(channels, height, width\) input, got \(64,\)$"):
        conv_bn_relu((64,), 8)
    with pytest.raises(ValueError, match="^pool must be 'max', 'avg' or 'none', got 'min'$"):
        conv_bn_relu((3, 8, 8), 8, pool="min")


def test_the_built_in_names():
    assert BUILTIN_STAGES == {"linear_bn_relu": linear_bn_relu, "linear": linear, "conv_bn_relu": conv_bn_relu}
