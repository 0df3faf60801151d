"""Running one job end to end: data, workers (local or remote), training, results, cleanup."""
from __future__ import annotations

import json
import logging
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from dni.coordinator.checkpoints import Checkpoints
from dni.coordinator.data import Dataset, load_dataset
from dni.coordinator.job import Job, job_from_table
from dni.coordinator.interrupts import INTERRUPTS
from dni.coordinator.launcher import LocalWorkers
from dni.coordinator.pipeline import Pipeline
from dni.coordinator.plots import plot_accuracy
from dni.coordinator.results import RunFolder, read_metrics
from dni.coordinator.shapes import check_stages
from dni.coordinator.tensorboard import require_tensorboard
from dni.coordinator.trainer import Trainer
from dni.errors import ConfigError, DniError
from dni.protocol import Endpoints, ProtocolError, connectable, worker_endpoints
from dni.protocol.linkdelay import describe
from dni.protocol.security import FIX, Keys, check_plaintext_allowed, load_keys

log = logging.getLogger("dni.run")
# The coordinator's only tensor work is slicing and scaling batches. More intra-op threads
# than one would spin between those small ops on the very cores the workers compute on.
COORDINATOR_THREADS = 1


def run_job(job: Job, bind: Optional[str] = None, advertise: Optional[str] = None, transport: str = "ipc",
            show_progress: bool = True, worker_log_level: str = "WARNING",
            resume: Optional[RunFolder] = None, keys: Optional[Keys] = None,
            endpoints: Optional[Sequence[Endpoints]] = None,
            annotations: Optional[dict[str, Any]] = None, data: Optional[Dataset] = None) -> tuple[RunFolder, dict[str, Any]]:
    """Train `job`; with `resume`, continue that run folder from its last checkpoint.

    Workers are local processes started here, or remote: at the job's stage addresses (base
    addresses, ports P..P+2), or at `endpoints`, one per stage with its three sockets each, as
    workers that bound ports of their own choosing report them (`dni.launch` finds them so).
    `annotations` are added to the run's summary.json, whether it completes or stops. `data` is
    the job's dataset if it was loaded already (`job_data`).
    """
    if endpoints is not None and len(endpoints) != len(job.stages):
        raise ConfigError(f"{len(endpoints)} workers for a job of {len(job.stages)} stages")
    keys = _run_keys(job, keys, [bind, advertise], [e.control for e in endpoints or []])
    require_tensorboard(job)
    torch.set_num_threads(COORDINATOR_THREADS)
    data = data if data is not None else job_data(job)
    remote = endpoints is not None or job.stages[0].address is not None
    if not remote:  # remote stages are checked by their workers, whose configure replies give their shapes
        check_stages(job, data.input_shape, data.num_classes)
    folder = resume or RunFolder.create(job)
    annotations = annotations or {}
    job_id = f"{folder.path.name}-{secrets.token_hex(4)}"
    local = None if remote else LocalWorkers(len(job.stages), transport, worker_log_level, keys.directory if keys else None)
    inbox = bind or (f"ipc://{local.directory}/coordinator" if transport == "ipc" and local else "tcp://127.0.0.1:*" if local else "tcp://0.0.0.0:5550" if keys else "tcp://127.0.0.1:5550")
    pipeline = None
    try:
        if local:
            local.start()
        endpoints = local.endpoints if local else list(endpoints or [worker_endpoints(stage.address) for stage in job.stages])
        pipeline = Pipeline(job_id, endpoints, inbox, health_check=local.check if local else lambda: None, keys=keys,
                            link_delay_ms=job.link_delay_ms)
        reachable = advertise or connectable(pipeline.inbox_address, socket.gethostname() if remote else "127.0.0.1")
        pipeline.wait_for_workers(timeout=60 if local else 300)
        log.info("job %s: %d stages; results in %s", job_id, len(endpoints), folder.path)
        if job.link_delay_ms:
            log.info("%s: every data message, the coordinator's included, leaves its sender that late", describe(job.link_delay_ms))
        for stage, at in enumerate(endpoints):
            log.info("stage %d listens at control %s, forward %s, backward %s", stage, at.control, at.forward, at.backward)
        summary = Trainer(job, job_id, data, pipeline, folder, reachable, show_progress,
                          replace_worker=local.restart if local else _waiting_for(pipeline, job.rejoin_seconds)).run()
        INTERRUPTS.finish()
        summary.update(annotations)
        folder.write_json("summary.json", {"status": "complete", **summary})
        plot_accuracy([folder.path], folder.plot_path, f"{job.name}: {job.mode.value}")
        return folder, summary
    except BaseException as error:
        _record_stop(folder, job, error, annotations)
        raise
    finally:
        if pipeline is not None:
            _stop_workers(pipeline)
            pipeline.close()
        if local:
            local.stop()


def job_data(job: Job) -> Dataset:
    """The job's dataset, cut to its subsets."""
    return load_dataset(job.dataset, job.resolved_data_root(), job.download, job.verify_data).subset(job.train_subset, job.test_subset)


class RunComplete(DniError):
    """`--resume` of a run that has already finished: nothing to do."""

    exit_code = 0


def resume_job(path: Path, **options: Any) -> tuple[RunFolder, dict[str, Any]]:
    """Continue a stopped run from its last checkpoint, with the job it was started with."""
    folder = RunFolder.open(path)
    if folder.summary_path.is_file():
        summary = json.loads(folder.summary_path.read_text())
        if summary.get("status", "complete") == "complete":
            raise RunComplete(f"{path} already finished ({summary.get('steps')} steps, test accuracy "
                              f"{summary.get('test_accuracy', 0):.2%}); nothing to resume")
    job = job_from_table(json.loads((path / "job.json").read_text()), str(path / "job.json"))
    return run_job(job, resume=folder, **options)


def _record_stop(folder: RunFolder, job: Job, error: BaseException, annotations: Optional[dict[str, Any]] = None) -> None:
    """What a stopped run leaves: a summary saying why and where --resume starts, and its plot so far."""
    interrupted = isinstance(error, KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    if not interrupted:
        log.error("stopping the run: %s", error)
    try:
        if folder.metrics_path.is_file() and read_metrics(folder.path):
            plot_accuracy([folder.path], folder.plot_path, f"{job.name}: {job.mode.value} ({status})")
        folder.write_json("summary.json", {
            "status": status, "error": status if interrupted else str(error), "failed_stage": getattr(error, "stage", None),
            "job": job.name, "mode": job.mode.value, "resume_from_step": Checkpoints(folder.path / "checkpoints").position().step,
            **(annotations or {}),
        })
    except OSError as failure:  # the run's own error is what matters; this one only goes to the log
        log.error("could not record the stop in %s: %s", folder.path, failure)


def _run_keys(job: Job, keys: Optional[Keys], addresses: list[Optional[str]], found: Sequence[str] = ()) -> Optional[Keys]:
    """The run's CURVE keys, settled before anything starts.

    Keys come from the argument, else the job's `keys` directory unless `insecure`.
    Remote workers at typed addresses need keys, or an explicit `insecure` when every
    address is on loopback; local workers over ipc:// or loopback tcp need none, nor do
    workers `found` through a launcher's rendezvous as long as every one is on loopback.
    """
    if keys is None and job.keys and not job.insecure:
        keys = load_keys(job.keys)
    if keys is not None:
        return keys
    remote = [stage.address for stage in job.stages if stage.address is not None]
    if remote and not job.insecure:
        raise ProtocolError(f"remote workers need CURVE keys: {FIX}; "
                            "for workers on this machine only (tcp://127.0.0.1), --insecure (job file: insecure = true) runs without")
    check_plaintext_allowed([address for address in [*remote, *found, *addresses] if address], "address")
    return None


def _waiting_for(pipeline: Pipeline, seconds: int) -> Optional[Callable[[int], Endpoints]]:
    """For workers started elsewhere: wait for their orchestrator to bring a lost one back at the same address."""
    if not seconds:
        return None

    def replacement(stage: int) -> Endpoints:
        pipeline.await_worker(stage, seconds)
        return pipeline.endpoints[stage]

    return replacement


def _stop_workers(pipeline: Pipeline) -> None:
    pipeline.gone(grace=0.0)  # takes in the latest connection events
    for stage in range(pipeline.stages):
        if pipeline.disconnected_at[stage] is not None:
            continue  # nobody there to tell
        try:
            pipeline.request(stage, "stop", timeout=5)
        except Exception as error:  # the worker may already be gone; cleanup goes on regardless
            log.debug("stage %d did not acknowledge stop: %s", stage, error)
