"""The two-heads example's second label: whether a digit is odd (1) or even (0).

A head's `labels` names a function of the data's labels, an int64 numpy array of one label per example, that
returns the head's own (int64, one per example, in 0..classes - 1). Only the coordinator calls it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["parity"]


def parity(digits: np.ndarray) -> np.ndarray:
    return digits % 2
