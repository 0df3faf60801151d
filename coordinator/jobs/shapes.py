"""Checking a job's stages against each other before any local worker starts."""
from __future__ import annotations

from dni.coordinator.jobs.job import Job
from dni.errors import ConfigError
from dni.workers.build.builder import build_stages
from dni.workers.build.contracts import Shape

__all__ = ["check_last_shape", "check_stages"]


def check_stages(job: Job, input_shape: Shape, num_classes: int) -> list[Shape]:
    """Build every stage once on the CPU; returns each stage's output shape or raises ConfigError naming the stage."""
    built = build_stages(job.stages, input_shape=input_shape, mode=job.mode, num_classes=num_classes, seed=job.seed)
    shapes = [modules.output_shape for modules in built]
    check_last_shape(job, shapes[-1], num_classes)
    return shapes


def check_last_shape(job: Job, shape: Shape, num_classes: int) -> None:
    if tuple(shape) != (num_classes,):
        raise ConfigError(f"the last stage ({job.stages[-1].kind}) outputs {list(shape)}, but {job.dataset} has {num_classes} classes")
