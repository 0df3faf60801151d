"""The training modes, and what each asks of a stage.

Semantics follow the reference experiment (Jaderberg et al. 2017 as written up
in the single-process TensorFlow reference):

- backprop: update-locked; a stage updates only when the true gradient of the
  loss w.r.t. its output has come back, and takes no new batch before that.
- sg: a stage's synthesizer predicts dL/d(output); the stage updates at once
  with that prediction backpropagated through itself; the same backward pass
  gives dL/d(input), the training target of the previous synthesizer
  (bootstrapping). The last hidden stage's target is the true gradient.
- cdni: sg with the one-hot label concatenated to the synthesizer input.
- sl: synthetic loss; the synthesizer predicts a non-negative per-example loss
  (a squared output) and the stage follows its gradient; targets are the next
  synthesizer's prediction, and the true per-example loss for the last one.
- no_bprop: hidden stages never learn; only the last stage does.
"""
from __future__ import annotations

import enum


class Mode(str, enum.Enum):
    BACKPROP = "backprop"
    SG = "sg"
    CDNI = "cdni"
    SL = "sl"
    NO_BPROP = "no_bprop"

    @property
    def uses_synthesizer(self) -> bool:
        return self in (Mode.SG, Mode.CDNI, Mode.SL)

    @property
    def conditioned(self) -> bool:
        return self is Mode.CDNI

    @property
    def synthetic_loss(self) -> bool:
        return self is Mode.SL

    @property
    def locked(self) -> bool:
        return self is Mode.BACKPROP

    @property
    def sends_targets_upstream(self) -> bool:
        return self is not Mode.NO_BPROP


MODE_NAMES = tuple(mode.value for mode in Mode)
