"""What one worker is told: a stage's `StageAssignment`, built the same way by every trainer.

The job's `WorkerSettings` are copied row by row (`WORKER_SETTINGS`), so a new worker setting reaches every worker
without a trainer naming it; the rest is what the coordinator resolved for this stage: its neighbours' sockets,
its input shape, the classes and loss of the data or task, the threads it may use and the checkpoint it resumes.
"""
from __future__ import annotations

from typing import Optional, Sequence

from dni.coordinator.jobs.job import Job
from dni.protocol import Endpoints
from dni.spec import WORKER_SETTINGS, PixelScaling, StageAssignment

__all__ = ["stage_assignment"]


def stage_assignment(job: Job, index: int, endpoints: Sequence[Endpoints], input_shape: Sequence[int], coordinator: str,
                     restore: Optional[str], job_id: str, *, num_classes: int, loss: str,
                     pixels: Optional[PixelScaling] = None) -> StageAssignment:
    """Stage `index`'s assignment: `endpoints` are every stage's (its neighbours' are its upstream and downstream),
    `restore` the checkpoint file it starts from (None: fresh); `num_classes` and `loss` are the dataset's (a
    feed-forward job) or the task's (a sequence job); `pixels` says how the first stage scales uint8 batches."""
    last = index == len(job.stages) - 1
    return StageAssignment(
        job=job_id, index=index, num_stages=len(job.stages), spec=job.stages[index], input_shape=tuple(input_shape),
        num_classes=num_classes, threads=job.threads_per_worker(), coordinator=coordinator,
        upstream=endpoints[index - 1].backward if index > 0 else None,
        downstream=None if last else endpoints[index + 1].forward,
        restore=restore, loss=loss, pixels=pixels if index == 0 else None,
        **{row.name: getattr(job, row.name) for row in WORKER_SETTINGS},
    )
