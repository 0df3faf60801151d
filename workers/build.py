"""Building one stage's module and synthesizer, identically wherever it is built.

Workers, the coordinator's up-front shape check, the single-process baselines
and the tests' references all build through here, so a seed gives the same
weights everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from dni.errors import ConfigError
from dni.spec import Mode, StageSpec
from dni.workers.interface import Shape, call_stage
from dni.workers.registry import (STAGE_ARGUMENTS, SYNTHESIZER_ARGUMENTS, UnknownBuilderError, check_params, resolve_stage,
                                  resolve_synthesizer)

__all__ = ["StageModules", "build_stage", "build_stages", "output_shape_of", "stage_seed"]


@dataclass
class StageModules:
    module: nn.Module
    synthesizer: Optional[nn.Module]
    output_shape: Shape


def stage_seed(seed: int, index: int) -> int:
    return seed * 1009 + index


def build_stage(spec: StageSpec, *, index: int, input_shape: Shape, mode: Mode, num_classes: int,
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


def build_stages(stages: Sequence[StageSpec], *, input_shape: Shape, mode: Mode, num_classes: int, seed: int,
                 device: str = "cpu") -> list[StageModules]:
    """Every stage of a pipeline in one process, each built for the previous one's output shape.

    A stage that does not fit its input raises a ConfigError naming the stage and the shapes.
    """
    built: list[StageModules] = []
    shape = tuple(input_shape)
    for index, spec in enumerate(stages):
        try:
            modules = build_stage(spec, index=index, input_shape=shape, mode=mode, num_classes=num_classes, seed=seed,
                                  is_last=index == len(stages) - 1, device=device)
        except UnknownBuilderError as error:
            raise ConfigError(f"stage {index}: {error}") from error
        except ConfigError:  # parameters that do not fit the builder: the message names the stage already
            raise
        except (TypeError, ValueError, RuntimeError) as error:
            raise ConfigError(
                f"stage {index} ({spec.kind} {spec.params}, synthesizer {spec.synthesizer.kind}) does not fit "
                f"its input of shape {list(shape)} (the output of stage {index - 1 if index else 'data'}): {error}"
            ) from error
        built.append(modules)
        shape = modules.output_shape
    return built


def output_shape_of(module: nn.Module, input_shape: Shape, device: str = "cpu") -> Shape:
    """Per-example output shape, found by running the module in eval mode on a dummy batch."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        probe = torch.zeros(2, *input_shape, device=device)
        output = call_stage(module, probe, torch.zeros(2, dtype=torch.int64, device=device))
    module.train(was_training)
    return tuple(output.shape[1:])
