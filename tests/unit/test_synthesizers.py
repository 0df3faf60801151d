"""workers/interfaces/synthesizers.py: the built-in synthesizers predict a gradient shaped like the activation, or one
value per example, from the activation and an optional one-hot label."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dni.workers.interfaces.synthesizers import ConvSynthesizer, MLPSynthesizer


def test_mlp_predicts_the_activation_shape_and_starts_at_zero():
    synthesizer = MLPSynthesizer((2, 3), (2, 3), 0, True, hidden=7, layers=2)
    assert [type(layer) for layer in synthesizer.hidden] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2
    assert synthesizer.hidden[0].in_features == 6 and synthesizer.output.out_features == 6
    prediction = synthesizer(torch.randn(4, 2, 3), None)
    assert prediction.shape == (4, 2, 3) and not prediction.any()


def test_mlp_appends_the_condition_to_its_input():
    torch.manual_seed(0)
    synthesizer = MLPSynthesizer((3,), (3,), 2, False, hidden=4, layers=1).eval()
    h, first, second = torch.randn(2, 3), torch.tensor([[1.0, 0.0]] * 2), torch.tensor([[0.0, 1.0]] * 2)
    assert synthesizer.hidden[0].in_features == 5
    torch.testing.assert_close(synthesizer(h, first), synthesizer.output(synthesizer.hidden(torch.cat([h, first], 1))))
    assert not torch.equal(synthesizer(h, first), synthesizer(h, second))


def test_mlp_without_hidden_layers_is_one_linear_map():
    synthesizer = MLPSynthesizer((4,), (1,), 0, False, layers=0)
    h = torch.randn(3, 4)
    torch.testing.assert_close(synthesizer(h, None), h @ synthesizer.output.weight.T + synthesizer.output.bias)


def test_conv_predicts_the_activation_map_or_its_spatial_mean():
    torch.manual_seed(0)
    grad = ConvSynthesizer((4, 5, 5), (4, 5, 5), 0, True, channels=3, kernel=3)
    assert grad(torch.randn(2, 4, 5, 5), None).shape == (2, 4, 5, 5)
    loss = ConvSynthesizer((4, 5, 5), (1,), 0, False, channels=3, kernel=3).eval()
    h = torch.randn(2, 4, 5, 5)
    assert loss(h, None).shape == (2, 1)
    torch.testing.assert_close(loss(h, None), loss.output(loss.hidden(h)).mean(dim=(2, 3)))


def test_conv_spreads_the_condition_over_extra_planes():
    synthesizer = ConvSynthesizer((4, 5, 5), (4, 5, 5), 10, True, channels=3, kernel=3)
    assert synthesizer.hidden[0].in_channels == 14
    assert synthesizer(torch.randn(2, 4, 5, 5), torch.eye(10)[:2]).shape == (2, 4, 5, 5)


def test_conv_refuses_flat_activations_and_other_output_shapes():
    with pytest.raises(ValueError, match=r"^conv synthesizer needs \(channels, height, width\) activations, got \(16,\)$"):
        ConvSynthesizer((16,), (16,), 0, True)
    with pytest.raises(ValueError, match=r"^conv synthesizer predicts \(4, 5, 5\) or \(1,\), not \(2,\)$"):
        ConvSynthesizer((4, 5, 5), (2,), 0, True)
