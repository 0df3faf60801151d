"""Building one stage's module and synthesizer, identically wherever it is built.

Workers, the coordinator's up-front shape check and the tests' single-process
references all build through here, so a seed gives the same weights everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from dni.workers.interface import Shape, call_stage
from dni.workers.modes import Mode
from dni.workers.registry import STAGE_ARGUMENTS, SYNTHESIZER_ARGUMENTS, check_params, resolve_stage, resolve_synthesizer
from dni.workers.spec import StageSpec


@dataclass
class StageModules:
    module: nn.Module
    synthesizer: Optional[nn.Module]
    output_shape: Shape


def stage_seed(seed: int, index: int) -> int:
    return seed * 1009 + index


def build_stage(spec: StageSpec, index: int, input_shape: Shape, mode: Mode, num_classes: int,
                seed: int, is_last: bool, device: str = "cpu") -> StageModules:
    """The stage's module, and its synthesizer when the mode uses one (never for the last stage).

    The job's parameters are checked against each builder's signature first (ConfigError).
    """
    torch.manual_seed(stage_seed(seed, index))
    where = f"stage {index} ({spec.kind})"
    builder = resolve_stage(spec.kind)
    check_params(builder, spec.params, where, STAGE_ARGUMENTS)
    module = builder(tuple(input_shape), **spec.params).to(device)
    output_shape = output_shape_of(module, input_shape, device)
    synthesizer = None
    if mode.uses_synthesizer and not is_last:
        synthesizer_builder = resolve_synthesizer(spec.synthesizer.kind)
        check_params(synthesizer_builder, spec.synthesizer.params, f"{where}, synthesizer {spec.synthesizer.kind}", SYNTHESIZER_ARGUMENTS)
        synthesizer = synthesizer_builder(
            output_shape,
            (1,) if mode.synthetic_loss else output_shape,
            num_classes if mode.conditioned else 0,
            not mode.synthetic_loss,  # a squared output starting at zero could never move
            **spec.synthesizer.params,
        ).to(device)
    return StageModules(module, synthesizer, output_shape)


def output_shape_of(module: nn.Module, input_shape: Shape, device: str = "cpu") -> Shape:
    """Per-example output shape, found by running the module in eval mode on a dummy batch."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        probe = torch.zeros(2, *input_shape, device=device)
        output = call_stage(module, probe, torch.zeros(2, dtype=torch.int64, device=device))
    module.train(was_training)
    return tuple(output.shape[1:])
