"""Checking a job's stages against each other before any worker starts."""
from __future__ import annotations

from dni.workers.build import build_stage
from dni.workers.interface import Shape
from dni.workers.registry import UnknownBuilderError
from dni.workers.spec import ConfigError

from dni.coordinator.job import Job


def check_stages(job: Job, input_shape: Shape, num_classes: int) -> list[Shape]:
    """Build every stage once on the CPU; returns each stage's output shape or raises ConfigError naming the stage."""
    shapes: list[Shape] = []
    shape = tuple(input_shape)
    last = len(job.stages) - 1
    for index, entry in enumerate(job.stages):
        spec = entry.spec
        try:
            shape = build_stage(spec, index, shape, job.mode, num_classes, job.seed, index == last).output_shape
        except UnknownBuilderError as error:
            raise ConfigError(f"stage {index}: {error}") from error
        except ConfigError:  # parameters that do not fit the builder: the message names the stage already
            raise
        except (TypeError, ValueError, RuntimeError) as error:
            raise ConfigError(
                f"stage {index} ({spec.kind} {spec.params}, synthesizer {spec.synthesizer.kind}) does not fit "
                f"its input of shape {list(shape)} (the output of stage {index - 1 if index else 'data'}): {error}"
            ) from error
        shapes.append(shape)
    if shapes[-1] != (num_classes,):
        raise ConfigError(f"the last stage ({job.stages[-1].spec.kind}) outputs {list(shapes[-1])}, but {job.dataset} has {num_classes} classes")
    return shapes
