"""What one worker is told: a stage's `StageAssignment`, built the same way by every trainer.

The job's `WorkerSettings` are copied row by row (`WORKER_SETTINGS`), so a new worker setting reaches every worker
without a trainer naming it; the rest is what the coordinator resolved for this stage: its edges (the sockets at
their other ends, and the shape each input brings), the shape its module takes, the classes and loss of its data
or task (a head's own), the threads it may use and the checkpoint it resumes.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from dni.coordinator.jobs.job import Job
from dni.graph import join_shape
from dni.protocol import Endpoints
from dni.spec import WORKER_SETTINGS, Edge, PixelScaling, StageAssignment

__all__ = ["OutputShape", "stage_assignment"]


OutputShape = Union[Sequence[int], Mapping[str, Sequence[int]]]  # a stage's output, or each output edge's by consumer


def stage_assignment(job: Job, index: int, endpoints: Sequence[Endpoints], shapes: Mapping[int, OutputShape],
                     coordinator: str, restore: Optional[str], job_id: str, *, num_classes: int, loss: str,
                     pixels: Optional[PixelScaling] = None) -> StageAssignment:
    """Stage `index`'s assignment: `endpoints` are every stage's, `shapes` the per-example output shape of every
    stage configured so far (or of each of its output edges, by consumer name) and of the data (-1); `restore` the
    checkpoint file it starts from (None: fresh); `num_classes` and `loss` are the dataset's (a feed-forward job) or
    the task's (a sequence job), a head's own where it sets them; `pixels` says how a stage that takes the data
    scales uint8 batches."""
    topology, spec = job.topology, job.stages[index]
    names = topology.names
    inputs = tuple(Edge("data" if source < 0 else names[source], source,
                        None if source < 0 else endpoints[source].backward, _edge_shape(shapes[source], names[index]))
                   for source in topology.inputs[index])
    outputs = tuple(Edge(names[consumer], consumer, endpoints[consumer].forward) for consumer in topology.consumers(index))
    head = index in topology.heads
    return StageAssignment(
        job=job_id, index=index, num_stages=len(job.stages), spec=spec,
        input_shape=join_shape(spec.join, [edge.shape for edge in inputs], topology.describe(index)),
        num_classes=(spec.num_classes or num_classes) if head else num_classes, threads=job.threads_per_worker(),
        coordinator=coordinator, inputs=inputs, outputs=outputs, name="" if topology.chain else names[index],
        join=spec.join, restore=restore, loss=(spec.loss or loss) if head else loss, loss_weight=spec.loss_weight,
        pixels=pixels if any(edge.peer < 0 for edge in inputs) else None,
        **{row.name: getattr(job, row.name) for row in WORKER_SETTINGS},
    )


def _edge_shape(shape: OutputShape, consumer: str) -> tuple[int, ...]:
    return tuple(shape[consumer] if isinstance(shape, Mapping) else shape)
