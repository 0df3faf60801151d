"""Which stage the coordinator sends what: the data to every stage that takes it, the labels straight to every stage
that uses them (a head, a conditioned synthesizer, a module that asks for them), each head its own.

A head's labels are the data's, or a function of them that its `labels` key names (`package.module:function`,
taking and returning an int64 numpy array of one label per example): a second task on the same data, as the
two-heads example's. Which stages use labels is what each worker said when it was configured, so a plug-in
stage that asks for them gets them without the coordinator knowing its kind. A chain's first stage gets one
message a step; a stage that needs labels but not the data gets a message of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from dni.coordinator.jobs.job import Job
from dni.errors import ConfigError
from dni.workers.build.registry import UnknownBuilderError, import_callable

__all__ = ["LabelsFunction", "Route", "Routes", "check_head_labels", "head_labels", "same_labels"]

LabelsFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Route:
    """What one stage is sent of each step: the examples, and the labels (made by `labels` from the data's)."""
    stage: int
    data: bool
    labels: Optional[LabelsFunction]


class Routes:
    """Every stage's `Route`; `parts` splits a step's arrays into each stage's message."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(route for route in routes if route.data or route.labels is not None)

    @classmethod
    def of(cls, job: Job, takes_labels: Sequence[bool]) -> "Routes":
        topology = job.topology
        return cls([Route(index, -1 in topology.inputs[index], head_labels(job, index) if takes_labels[index] else None)
                    for index in range(len(job.stages))])

    @property
    def stages(self) -> tuple[int, ...]:
        """The stages the coordinator feeds."""
        return tuple(route.stage for route in self.routes)

    def parts(self, arrays: dict[str, np.ndarray]) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Each fed stage and the arrays of its message: `x` where it takes the data, `labels` (and a chunk's `mask`)
        where it uses them."""
        parts = []
        for route in self.routes:
            part = {"x": arrays["x"]} if route.data else {}
            if route.labels is not None:
                part["labels"] = route.labels(arrays["labels"])
                if "mask" in arrays:
                    part["mask"] = arrays["mask"]
            parts.append((route.stage, part))
        return parts


def same_labels(labels: np.ndarray) -> np.ndarray:
    """The data's own labels: what a head without `labels` is sent."""
    return labels


def head_labels(job: Job, index: int) -> LabelsFunction:
    """The labels stage `index` is sent: a head's own function of the data's, or the data's."""
    path = job.stages[index].labels
    if not path:
        return same_labels
    try:
        return import_callable(path, "labels")
    except UnknownBuilderError as error:
        raise ConfigError(f"{job.topology.describe(index)}: {error}") from None


def check_head_labels(job: Job, labels: np.ndarray, num_classes: int) -> None:
    """Every head's labels of a sample batch must be int64, one per example, within its classes: else the head has
    no labels it can learn from (ConfigError naming it)."""
    topology = job.topology
    for head in topology.heads:
        stage = job.stages[head]
        if not stage.labels:
            continue
        try:
            made = head_labels(job, head)(labels)
        except Exception as error:  # a plug-in's own failure, on a sample: refused before any worker starts
            raise ConfigError(f"head {topology.names[head]!r}: labels = {stage.labels!r} failed on a sample batch: "
                              f"{type(error).__name__}: {error}") from error
        classes = stage.num_classes or num_classes
        if not (isinstance(made, np.ndarray) and made.dtype == np.int64 and made.shape == labels.shape[:1]
                and made.size and 0 <= made.min() and made.max() < classes):
            got = f"{made.dtype} {list(made.shape)}" if isinstance(made, np.ndarray) else type(made).__name__
            raise ConfigError(f"head {topology.names[head]!r}: labels = {stage.labels!r} must return int64 labels, one per "
                              f"example, in 0..{classes - 1} (num_classes = {classes}); got {got} for a batch of {len(labels)}")
