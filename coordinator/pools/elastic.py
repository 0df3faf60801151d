"""The coordinator of a torchrun group (`python -m dni.coordinator.pools.elastic`, started by rank 0 of `dni.launch`).

It reads every rank's worker endpoints from the group's store and trains as `dni run`
does, in a run folder named from the rendezvous id and held under a lock, so a restarted
group finds that folder and resumes from its last checkpoint by itself. What the ranks
and their coordinator share (the flags, the job's check against the group, this host's
address, torchrun's error file) is here too; the rank itself is `dni.launch`.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import IO, Any, Optional, Sequence

from dni.coordinator.cli import add_run_arguments, job_from_args, report_run
from dni.coordinator.train.interrupts import INTERRUPTS
from dni.coordinator.jobs.job import Job, job_as_table
from dni.coordinator.pools.pool import RemoteWorkers
from dni.coordinator.pools.rendezvous import Launch, Rendezvous
from dni.coordinator.results.folder import RunFolder
from dni.errors import ConfigError, DniError, PipelineError
from dni.lifetime import die_with_parent, exit_now
from dni.protocol import address_towards, tcp_address

__all__ = [
    "TorchrunWorkers", "build_parser", "configure_logging", "coordinate", "coordinate_main", "group_host", "launched_folder",
    "launched_job", "release_run_folders", "tell_torchrun",
]

log = logging.getLogger("dni.launch")
GATHER_SECONDS = 300.0  # how long the coordinator waits for every worker to publish its endpoints
LOCK_SECONDS = 60.0  # how long a coordinator waits for the one of a previous attempt to let go of the run folder
HOST_VARIABLE = "DNI_HOST"  # this host's address for the group, where the route to the store is not it
# settings that may differ between two starts of one run without changing what it trains
NOT_COMPARED = ("keys", "insecure", "data_root", "results", "tensorboard", "download", "verify_data", "record_spans",
                "profile")


def build_parser(prog: str = "torchrun ... -m dni.launch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "One rank of a dni job under torchrun: rank r serves stage r, rank 0 also runs the coordinator. Start "
        "as many ranks as the job has stages, e.g. torchrun --standalone --nproc-per-node 3 -m dni.launch mnist. "
        "Takes the flags of `dni run`; the workers are the ranks (no --workers), and the run folder is named from "
        "torchrun's rendezvous id, so a restarted group resumes it."))
    add_run_arguments(parser)
    return parser


def launched_job(args: argparse.Namespace, launch: Launch) -> Job:
    """The job as `dni run` would read it, checked against the group that serves it."""
    if args.workers:
        raise ConfigError("under torchrun the ranks are the workers: drop --workers")
    if args.resume and args.job is None:
        job = RunFolder.open(args.resume).stored_job()
    else:
        job = job_from_args(args)
    if any(stage.address for stage in job.stages):
        raise ConfigError("under torchrun the ranks are the workers: the job's stages must not name an address")
    if launch.world_size != len(job.stages):
        raise ConfigError(
            f"torchrun started {launch.world_size} ranks (nodes x --nproc-per-node) but job {job.name!r} has "
            f"{len(job.stages)} stages: dni.launch serves one stage per rank, so start {len(job.stages)} ranks "
            f"(e.g. torchrun --standalone --nproc-per-node {len(job.stages)} -m dni.launch ...)")
    return job


def group_host(launch: Launch) -> str:
    """This host's address for the group: loopback on one node, else the one on the route to the group's store."""
    if os.environ.get(HOST_VARIABLE):
        return os.environ[HOST_VARIABLE]
    if launch.nodes == 1:
        return "127.0.0.1"
    try:
        return address_towards(launch.store_host, launch.store_port)
    except OSError as error:
        raise ConfigError(f"cannot tell this host's address towards the group's store at {launch.store_host}:"
                          f"{launch.store_port} ({error}); set {HOST_VARIABLE} to an address the other hosts reach") from error


def coordinate_main(argv: Sequence[str]) -> int:
    """The coordinator rank 0 starts: `python -m dni.coordinator.pools.elastic --attempt ID --parent PID [dni run flags]`."""
    parser = build_parser("dni.coordinator.pools.elastic")
    parser.add_argument("--attempt", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, required=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    configure_logging("coordinator", args.log_level)
    INTERRUPTS.install()
    return report_run(lambda: coordinate(args), again="the same torchrun command, with the same --rdzv-id")


def tell_torchrun(error: BaseException) -> None:
    """Put `error` where torchrun's failure report shows it (the rank's TORCHELASTIC_ERROR_FILE, in torch's format)
    rather than a link to its docs. The coordinator writes its rank 0's file: rank 0 exits with its code."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    text = f"{type(error).__name__}: {error}"
    try:
        Path(path).write_text(json.dumps({"message": {"message": text, "extraInfo": {
            "py_callstack": text, "timestamp": str(int(time.time()))}}}))
    except OSError as failure:
        log.warning("could not write torchrun's error file %s: %s", path, failure)


def coordinate(args: argparse.Namespace) -> tuple[RunFolder, dict[str, Any]]:
    try:
        return _coordinate(args)
    except DniError as error:
        if error.exit_code:
            tell_torchrun(error)
        raise


def _coordinate(args: argparse.Namespace) -> tuple[RunFolder, dict[str, Any]]:
    from dni.coordinator.train.run import job_data, run_job

    launch = Launch.from_environment()
    job = launched_job(args, launch)
    folder, attempts = launched_folder(job, launch, args.resume)
    try:
        data = job_data(job)  # while the workers start
        pool = TorchrunWorkers(launch, args.attempt, job, args.bind or tcp_address(group_host(launch)))
        pool.start()
        annotations = {"run_id": launch.run_id, "restarts": launch.restart_count, "attempts": attempts,
                       "world_size": launch.world_size, "nodes": launch.nodes}
        return run_job(job, advertise=args.advertise, transport="tcp", show_progress=not args.no_progress, resume=folder,
                       pool=pool, annotations=annotations, data=data)
    finally:
        release_run_folders()


class TorchrunWorkers(RemoteWorkers):
    """The group's ranks as a pool: their endpoints are what each published in the group's store. A lost
    rank makes torchrun restart the whole group, this coordinator with it; that is waited for, up to
    the job's `rejoin_seconds`, as for any remote worker."""

    def __init__(self, launch: Launch, attempt: str, job: Job, inbox: str) -> None:
        super().__init__([], job.rejoin_seconds, inbox)
        self.launch = launch
        self.attempt = attempt
        self.stages = len(job.stages)

    def start(self) -> None:
        """Every rank's endpoints, as they publish them under this attempt."""
        records = Rendezvous.of(self.launch).gather(self.attempt, self.stages, GATHER_SECONDS)
        for record in records:
            log.info("%s", record)
        self.endpoints = [record.endpoints for record in records]


_held_locks: list[IO[str]] = []  # open for the life of the process: closing one lets go of its lock


def launched_folder(job: Job, launch: Launch, resume: Optional[Path]) -> tuple[RunFolder, int]:
    """This run's folder (named from the rendezvous id), held for this process, and how many times it was started.

    A folder that exists already is the same run started again (by torchrun after a failure, or by the
    same command given again): training resumes from its last checkpoint; a finished one is not run twice.
    """
    if resume is None and launch.run_id == "none":
        raise ConfigError("give torchrun --rdzv-id ID (or --standalone): the run folder is named from it, so a "
                          "restarted group finds its checkpoints")
    path = resume or Path(job.results) / f"{job.name}-{job.mode.value}-{re.sub(r'[^A-Za-z0-9_.-]', '_', launch.run_id)}"
    path.mkdir(parents=True, exist_ok=True)
    _held_locks.append(_lock(path / "coordinator.lock"))
    folder = RunFolder(path)
    table = json.loads(json.dumps(job_as_table(job)))
    if folder.job_path.is_file():
        stored = folder.stored_table()
        differ = sorted(key for key in {*table, *stored} if key not in NOT_COMPARED and table.get(key) != stored.get(key))
        if differ:
            raise ConfigError(f"{path} holds a run of another job (it differs in {', '.join(differ)}): give another "
                              "--rdzv-id, or --results elsewhere")
        folder.refuse_if_complete(" (give another --rdzv-id for a new run)")
    else:
        folder.write_json("job.json", table)
    starts_path = path / "launches.jsonl"
    with starts_path.open("a") as starts:
        starts.write(json.dumps({"started": time.time(), "restart_count": launch.restart_count, "nodes": launch.nodes}) + "\n")
    attempts = len(starts_path.read_text().splitlines())
    if attempts > 1:
        log.warning("run %s started again (attempt %d, torchrun restart %d): resuming from its last checkpoint",
                    path, attempts, launch.restart_count)
    return folder, attempts


def release_run_folders() -> None:
    """Let go of the run folders this process holds, once its coordination is over."""
    while _held_locks:
        _held_locks.pop().close()


def _lock(path: Path) -> IO[str]:
    handle = path.open("w")
    deadline = time.monotonic() + LOCK_SECONDS
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise PipelineError(f"another coordinator has held {path.parent} for {LOCK_SECONDS:.0f}s: "
                                    "is the same run (the same --rdzv-id) running elsewhere?") from None
            time.sleep(0.2)


def configure_logging(who: str, level: str) -> None:
    """Log lines that name the process (a rank, the coordinator), at `level`."""
    logging.basicConfig(level=level, format=f"%(asctime)s {who} %(name)s %(levelname)s %(message)s", force=True)


if __name__ == "__main__":
    exit_now(coordinate_main(sys.argv[1:]))
