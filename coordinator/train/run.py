"""Running one job end to end: data, a pool of workers, training, results, cleanup."""
from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from dni.coordinator.train.batch_feed import BatchFeed
from dni.coordinator.train.chunk_feed import ChunkFeed, with_readout_width
from dni.coordinator.data.dataset import Dataset
from dni.coordinator.data.datasets import open_dataset, with_classes
from dni.coordinator.train.feeds import Feed
from dni.coordinator.jobs.job import Job
from dni.coordinator.train.interrupts import INTERRUPTS
from dni.coordinator.pools.pipeline import Pipeline
from dni.coordinator.results.plots import plot_accuracy
from dni.coordinator.pools.pool import WorkerPool, pool_for
from dni.coordinator.results.folder import RunFolder, mark_abandoned_runs, read_metrics
from dni.coordinator.train.segments import Segments
from dni.coordinator.jobs.split import balance_job
from dni.coordinator.results.tensorboard import require_tensorboard
from dni.coordinator.data.tasks import open_task
from dni.coordinator.train.trainer import Trainer
from dni.errors import ConfigError, RunInterrupted
from dni.lifetime import claim, held_by, release
from dni.protocol import ProtocolError, connectable
from dni.protocol.linkdelay import describe
from dni.protocol.security import FIX, Keys, check_plaintext_allowed, load_keys

__all__ = ["feed_for", "job_data", "resume_job", "run_job"]

log = logging.getLogger("dni.run")
# The coordinator's only tensor work is slicing and scaling batches. More intra-op threads
# than one would spin between those small ops on the very cores the workers compute on.
COORDINATOR_THREADS = 1


def run_job(job: Job, bind: Optional[str] = None, advertise: Optional[str] = None, transport: str = "ipc",
            show_progress: bool = True, worker_log_level: str = "WARNING",
            resume: Optional[RunFolder] = None, keys: Optional[Keys] = None, pool: Optional[WorkerPool] = None,
            annotations: Optional[dict[str, Any]] = None, data: Optional[Dataset] = None) -> tuple[RunFolder, dict[str, Any]]:
    """Train `job`; with `resume`, continue that run folder from its last checkpoint.

    Its workers are the `pool` given, which stays the caller's to start and stop (a benchmark's
    `LocalWorkers(once=False)`, torchrun's ranks), else the one `pool_for` picks and this run
    starts and stops: local processes, or the remote workers at the job's stage addresses.
    `annotations` are added to the run's summary.json, whether it completes or stops. `data` is
    the job's dataset if it was loaded already (`job_data`).
    """
    keys = _run_keys(job, keys, [bind, advertise])
    require_tensorboard(job)
    torch.set_num_threads(COORDINATOR_THREADS)
    job, feed, split = feed_for(job, data)
    annotations = {**(annotations or {}), **split}
    owned = pool is None
    workers = pool or pool_for(job, keys, bind, transport, worker_log_level)
    if workers.builds_here:
        feed.check_stages()
    mark_abandoned_runs(resume.path.parent if resume else Path(job.results))
    folder = resume or RunFolder.create(job)
    # The run's one name for its user is its folder. The job id is the wire's: every message carries it, and a
    # worker refuses those of another id, so each start of the folder (a --resume) gets a fresh suffix and a stale
    # message of an earlier start, still queued at a worker that serves them all, is refused.
    job_id = f"{folder.path.name}-{secrets.token_hex(4)}"
    unit = feed.step_name
    pipeline = None
    try:
        claim(folder.path)
        if resume is not None:
            _say_resuming(folder, unit)
        if owned:
            workers.start()
        if len(workers.endpoints) < len(job.stages):
            raise ConfigError(f"{len(workers.endpoints)} workers for a job of {len(job.stages)} stages")
        pipeline = Pipeline(job_id, workers, len(job.stages), keys=keys, link_delay_ms=job.link_delay_ms)
        reachable = advertise or connectable(pipeline.inbox_address, workers.host)
        pipeline.wait_for_workers(timeout=workers.start_seconds)
        log.info("%d stages; results in %s", pipeline.stages, folder.path)
        log.debug("job id on the wire: %s", job_id)
        if job.link_delay_ms:
            log.info("%s: every data message, the coordinator's included, leaves its sender that late", describe(job.link_delay_ms))
        for stage, at in enumerate(pipeline.endpoints):
            log.info("stage %d listens at control %s, forward %s, backward %s", stage, at.control, at.forward, at.backward)
        summary = Trainer(job, job_id, feed, pipeline, folder, reachable, show_progress, pool=workers).run()
        INTERRUPTS.finish()
        summary.update(annotations)
        folder.write_json("summary.json", {"status": "complete", **summary})
        feed.plot(folder, summary)
        return folder, summary
    except BaseException as error:
        resume_from = _record_stop(folder, job, error, annotations)
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, RunInterrupted) and resume_from is not None:
            raise RunInterrupted(folder.path, resume_from, unit) from error
        raise
    finally:
        if pipeline is not None:
            _stop_workers(pipeline)
            pipeline.close()
        if owned:
            workers.stop()
        release(folder.path)


def feed_for(job: Job, data: Optional[Dataset] = None) -> tuple[Job, Feed, dict[str, Any]]:
    """The job's feed, the one place a dataset job and a sequence job part (by `Job.source`): the job as it runs,
    its feed, and what the summary should add."""
    return FEEDS[job.source](job, data)


def _chunk_feed(job: Job, data: Optional[Dataset]) -> tuple[Job, Feed, dict[str, Any]]:
    """A sequence task's feed, its readout as wide as the task's output."""
    task = open_task(job.task, job.text)
    job = with_readout_width(job, task)
    return job, ChunkFeed(job, task), {}


def _batch_feed(job: Job, data: Optional[Dataset]) -> tuple[Job, Feed, dict[str, Any]]:
    """A dataset's feed: its data (`data` if loaded already), checked to fit, and the model split between the stages
    (the split, as an annotation for the summary)."""
    data = data if data is not None else job_data(job)
    job.check_fits(len(data.train_y))
    job, cut = balance_job(job, data.input_shape)
    return job, BatchFeed(job, data), ({"model_split": cut} if cut else {})


FEEDS: dict[str, Callable[[Job, Optional[Dataset]], tuple[Job, Feed, dict[str, Any]]]] = {
    "task": _chunk_feed, "dataset": _batch_feed}


def job_data(job: Job) -> Dataset:
    """The job's dataset, checked, cut to its subsets, with the job's classes and normalisation."""
    data = open_dataset(job.dataset, job.resolved_data_root(), job.download, job.verify_data)
    return with_classes(data, job.num_classes).subset(job.train_subset, job.test_subset).normalized(job.normalize)


def resume_job(path: Path, **options: Any) -> tuple[RunFolder, dict[str, Any]]:
    """Continue a stopped run from its last checkpoint, with the job it was started with."""
    folder = RunFolder.open(path)
    folder.refuse_if_complete()
    if (owner := held_by(folder.path)) is not None:
        raise ConfigError(f"{folder.path} is being run by another coordinator (pid {owner}): stop it, or let it finish")
    return run_job(folder.stored_job(), resume=folder, **options)


def _say_resuming(folder: RunFolder, unit: str) -> None:
    """A resumed run says so first, and from where: the steps before its checkpoint are not trained again, and the
    elapsed time and results count its earlier starts. A folder nothing has run in yet (a torchrun group's first
    attempt, which passes its new folder as `resume`) says nothing."""
    step = folder.checkpoints.position().step
    if step:
        log.info("resuming %s from %s %d (checkpoint)", folder.path, unit, step)
    elif Segments(folder.path).all:
        log.info("resuming %s from the start: it stopped before its first checkpoint", folder.path)


def _record_stop(folder: RunFolder, job: Job, error: BaseException,
                 annotations: Optional[dict[str, Any]] = None) -> Optional[int]:
    """What a stopped run leaves: a summary saying why, where --resume starts and what every segment cost, then its
    plot so far; each written if it can be (on a full disk the small summary may fit where the plot does not).
    Returns the step --resume starts from, for the user; None if even that could not be read."""
    interrupted = isinstance(error, KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    if not interrupted:
        log.error("stopping the run: %s", error)
    resume_from = None
    try:
        resume_from = folder.checkpoints.position().step
        folder.write_json("summary.json", {
            "status": status, "error": status if interrupted else str(error), "failed_stage": getattr(error, "stage", None),
            "job": job.name, "mode": job.mode.value, "resume_from_step": resume_from,
            **Segments(folder.path).totals(), **(annotations or {}),
        })
        if folder.metrics_path.is_file() and read_metrics(folder.path):
            plot_accuracy([folder.path], folder.plot_path, f"{job.name}: {job.mode.value} ({status})")
    except OSError as failure:  # the run's own error is what matters; this one only goes to the log
        log.error("could not record the stop in %s: %s", folder.path, failure)
    return resume_from


def _run_keys(job: Job, keys: Optional[Keys], addresses: list[Optional[str]]) -> Optional[Keys]:
    """The run's CURVE keys, settled before anything starts.

    Keys come from the argument, else the job's `keys` directory unless `insecure`.
    Remote workers at typed addresses need keys, or an explicit `insecure` when every
    address is on loopback; local workers over ipc:// or loopback tcp need none, nor do
    a given pool's workers as long as every one is on loopback (the pipeline checks them).
    """
    if keys is None and job.keys and not job.insecure:
        keys = load_keys(job.keys)
    if keys is not None:
        return keys
    remote = [stage.address for stage in job.stages if stage.address is not None]
    if remote and not job.insecure:
        raise ProtocolError(f"remote workers need CURVE keys: {FIX}; "
                            "for workers on this machine only (tcp://127.0.0.1), --insecure (job file: insecure = true) runs without")
    check_plaintext_allowed([address for address in [*remote, *addresses] if address], "address")
    return None


def _stop_workers(pipeline: Pipeline) -> None:
    pipeline.gone(grace=0.0)  # takes in the latest connection events
    for stage in range(pipeline.stages):
        if pipeline.disconnected_at[stage] is not None:
            continue  # nobody there to tell
        pipeline.stopping.add(stage)
        try:
            pipeline.request(stage, "stop", timeout=5)
        except Exception as error:  # the worker may already be gone; cleanup goes on regardless
            log.debug("stage %d did not acknowledge stop: %s", stage, error)
