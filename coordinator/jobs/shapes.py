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
    for head in job.topology.heads:
        check_last_shape(job, shapes[head], num_classes, head)
    return shapes


def check_last_shape(job: Job, shape: Shape, num_classes: int, head: int = -1) -> None:
    """A head must output one score per class: the data's classes, or its own `num_classes`."""
    stage = job.stages[head]
    classes = stage.num_classes or num_classes
    if tuple(shape) == (classes,):
        return
    if job.topology.chain:
        raise ConfigError(f"the last stage ({stage.kind}) outputs {list(shape)}, but {job.dataset} has {num_classes} classes")
    has = f"num_classes = {classes}" if stage.num_classes else f"{job.dataset} has {classes} classes"
    raise ConfigError(f"head {job.topology.describe(head % len(job.stages))} ({stage.kind}) outputs {list(shape)}, but {has}")
