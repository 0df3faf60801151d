"""workers/step_losses.py: a sequence readout's per-step losses in bits, and when a step is right."""
from __future__ import annotations

import math

import torch

from dni.workers.step_losses import STEP_LOSSES, binary_bits, character_bits, step_correct


def test_binary_bits_sum_the_cross_entropy_of_a_steps_bits_in_bits():
    logits, targets = torch.zeros(1, 2, 8), torch.ones(1, 2, 8)
    torch.testing.assert_close(binary_bits(logits, targets), torch.full((1, 2), 8.0))  # a coin per bit: one bit each


def test_character_bits_are_a_steps_cross_entropy_in_bits():
    logits, targets = torch.zeros(2, 3, 4), torch.tensor([[0, 1, 2], [3, 3, 3]])
    torch.testing.assert_close(character_bits(logits, targets), torch.full((2, 3), 2.0))  # one of four: two bits
    sure = torch.full((1, 1, 4), -30.0)
    sure[0, 0, 1] = 30.0
    assert character_bits(sure, torch.tensor([[1]])).item() < 1e-6
    assert math.isclose(character_bits(sure, torch.tensor([[0]])).item(), 60 / math.log(2), rel_tol=1e-4)


def test_a_step_is_right_when_every_bit_or_the_class_is():
    logits = torch.tensor([[[2.0, -1.0], [2.0, 1.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert step_correct("bits", logits, targets).tolist() == [[True, False]]
    assert step_correct("cross_entropy", logits, torch.tensor([[0, 1]])).tolist() == [[True, False]]
    assert set(STEP_LOSSES) == {"bits", "cross_entropy"}
