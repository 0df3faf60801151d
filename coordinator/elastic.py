"""Training under torchrun: `torchrun ... -m dni.launch JOB [dni run flags]` (see README, "Several machines").

torchrun starts one process per rank, on one host or many, and restarts them all
when one dies (`--max-restarts`). Here rank r serves stage r: it binds a worker on
ports of its own choosing, on this host's address towards the group's store
(loopback when the group has one node), and publishes them in the store
(coordinator/rendezvous.py). Rank 0 also starts the coordinator, in a process of
its own so that it shares no interpreter lock with stage 0. The coordinator reads
every worker's endpoints from the store and trains as `dni run` does, in a run
folder named from the rendezvous id, so a restarted group finds that folder and
resumes from its last checkpoint by itself.

Signals: torchrun stops a rank with SIGINT or SIGTERM (then SIGKILL 30 s later).
Rank 0 passes the signal on to its coordinator, which checkpoints if every stage
is still there and stops every worker; a worker keeps serving meanwhile, for at
most GRACE seconds, so that checkpoint can be taken. A second signal stops at once.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional, Sequence

import zmq

from dni.coordinator.cli import add_run_arguments, job_from_args, report_run
from dni.coordinator.interrupts import INTERRUPTS
from dni.coordinator.job import Job, job_as_table, job_from_table
from dni.coordinator.rendezvous import Launch, Rendezvous, WorkerRecord, new_nonce
from dni.coordinator.results import RunFolder
from dni.errors import ConfigError, DniError, PipelineError
from dni.lifetime import die_with_parent, exit_now
from dni.protocol import address_towards, tcp_address
from dni.protocol.security import Keys, check_plaintext_allowed, load_keys

__all__ = [
    "COORDINATOR_GRACE", "GATHER_SECONDS", "GRACE", "HOST_VARIABLE", "LOCK_SECONDS", "NOT_COMPARED", "POLL_SECONDS",
    "Rank", "build_parser", "coordinate", "coordinate_main", "group_host", "launched_folder",
    "launched_job", "main", "release_run_folders", "serve_rank", "tell_torchrun", "worker_keys",
]

log = logging.getLogger("dni.launch")
GRACE = 20.0  # after a signal, how long a worker waits for its coordinator to checkpoint and stop it
COORDINATOR_GRACE = 25.0  # after a signal, how long rank 0 waits for its coordinator (torchrun kills at 30 s)
GATHER_SECONDS = 300.0  # how long the coordinator waits for every worker to publish its endpoints
LOCK_SECONDS = 60.0  # how long a coordinator waits for the one of a previous attempt to let go of the run folder
POLL_SECONDS = 0.25
HOST_VARIABLE = "DNI_HOST"  # this host's address for the group, where the route to the store is not it
# settings that may differ between two starts of one run without changing what it trains
NOT_COMPARED = ("keys", "insecure", "data_root", "results", "tensorboard", "download", "verify_data", "record_spans",
                "profile")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m dni.launch`: one rank of a torchrun group."""
    exit_now(serve_rank(list(sys.argv[1:] if argv is None else argv)))


def build_parser(prog: str = "torchrun ... -m dni.launch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "One rank of a dni job under torchrun: rank r serves stage r, rank 0 also runs the coordinator. Start "
        "as many ranks as the job has stages, e.g. torchrun --standalone --nproc-per-node 3 -m dni.launch mnist. "
        "Takes the flags of `dni run`; the workers are the ranks (no --workers), and the run folder is named from "
        "torchrun's rendezvous id, so a restarted group resumes it."))
    add_run_arguments(parser)
    return parser


def serve_rank(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        launch = Launch.from_environment()
    except DniError as error:
        _logging("dni.launch", "WARNING")
        log.error("%s", error)
        return error.exit_code
    _logging(f"rank {launch.rank}", "WARNING")
    log.setLevel(args.log_level)
    return Rank(launch, argv).run(args)


def launched_job(args: argparse.Namespace, launch: Launch) -> Job:
    """The job as `dni run` would read it, checked against the group that serves it."""
    if args.workers:
        raise ConfigError("under torchrun the ranks are the workers: drop --workers")
    if args.resume and args.job is None:
        folder = RunFolder.open(args.resume)
        job = job_from_table(json.loads((folder.path / "job.json").read_text()), str(folder.path / "job.json"))
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


def worker_keys(job: Job) -> Optional[Keys]:
    """The job's CURVE keys (--keys or `keys =`), unless insecure; the worker refuses to bind beyond loopback without."""
    return load_keys(job.keys) if job.keys and not job.insecure else None


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


class Rank:
    """One rank: a worker serving its stage; rank 0 also starts, watches and reports its coordinator."""

    def __init__(self, launch: Launch, argv: list[str]) -> None:
        self.launch = launch
        self.argv = argv
        self.stages = launch.world_size
        self.worker: Any = None
        self.record: Optional[WorkerRecord] = None
        self.signalled_at: Optional[float] = None
        self.coordinator: Optional[subprocess.Popen] = None
        self.coordinator_code = 1

    def run(self, args: argparse.Namespace) -> int:
        rank = self.launch.rank
        try:
            job = launched_job(args, self.launch)
            host = group_host(self.launch)
            keys = worker_keys(job)
            if keys is None:  # as the worker would refuse, but before the store is asked anything
                check_plaintext_allowed([tcp_address(host, "0")], "worker address")
            rendezvous = self._store()
            if rank == 0:  # the coordinator starts first: its start-up overlaps this worker's
                attempt = rendezvous.begin()
                self.coordinator = self._start_coordinator(attempt)
            from dni.workers.cli import import_lazy_modules
            from dni.workers.worker import Worker

            import_lazy_modules()
            self.worker = Worker(tcp_address(host, "0"), once=True, keys=keys)
        except (DniError, zmq.ZMQError) as error:  # a ZMQError: the address is not this host's, say
            log.error("rank %d: %s", rank, error)
            tell_torchrun(error)
            if self.coordinator is not None:
                self.coordinator.kill()
                self.coordinator.wait()
            return getattr(error, "exit_code", 1)
        self.record = WorkerRecord(rank, self.worker.endpoints, socket.gethostname(), os.getpid(), new_nonce())
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self.worker.wakeup.writer, warn_on_full_buffer=False)  # a signal ends the worker's wait
        log.info("rank %d serves %s", rank, self.record)
        if rank == 0:
            rendezvous.publish(attempt, self.record)
            watch = threading.Thread(target=self._watch_coordinator, args=(attempt,), daemon=True)
        else:
            watch = threading.Thread(target=self._watch_store, args=(rendezvous,), daemon=True)
        watch.start()
        code = self.worker.serve()
        if self.coordinator is not None:
            watch.join()
            code = self.coordinator_code
        log.info("rank %d exits with code %d", rank, code)
        return code

    def _store(self, timeout: float = 60.0) -> Rendezvous:
        try:
            return Rendezvous.of(self.launch, timeout)
        except Exception as error:  # torch.distributed.DistStoreError and the like
            raise PipelineError(f"cannot reach the group's store at {self.launch.store_host}:{self.launch.store_port}: "
                                f"{error}") from error

    def _start_coordinator(self, attempt: str) -> subprocess.Popen:
        """The coordinator's process, started from the main thread (PR_SET_PDEATHSIG fires when the thread that started the child ends)."""
        command = [sys.executable, "-m", "dni.coordinator.elastic", "--attempt", attempt, "--parent", str(os.getpid()), *self.argv]
        # a session of its own: a signal to this rank's process group (torchrun's way) reaches it once, through us
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        again = self.signalled_at is not None
        if not again:
            self.signalled_at = time.monotonic()
            log.warning("rank %d: %s: stopping (the coordinator checkpoints first if it can)", self.launch.rank,
                        signal.Signals(signum).name)
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.coordinator.send_signal(signum)
        elif again:
            self.worker.stop("signalled twice")

    def _stopping(self) -> bool:
        """After a signal: stop serving once there is no job to checkpoint, or the grace is over."""
        if self.signalled_at is None:
            return False
        return self.worker.session is None or time.monotonic() - self.signalled_at > GRACE

    def _watch_coordinator(self, attempt: str) -> None:
        """Rank 0: wait for the coordinator; then tell every rank it is done, and stop this worker if it still serves."""
        while True:
            try:
                code = self.coordinator.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if self.signalled_at is not None and time.monotonic() - self.signalled_at > COORDINATOR_GRACE:
                    log.error("rank 0: the coordinator did not stop within %.0fs of the signal: killing it", COORDINATOR_GRACE)
                    self.coordinator.kill()
        self.coordinator_code = code if code >= 0 else 128 - code
        log.info("rank 0: the coordinator exited with code %d", self.coordinator_code)
        try:
            self._store(timeout=10).finish(attempt, self.coordinator_code, self.stages)
        except Exception as error:  # the other ranks then end when their agents stop them
            log.warning("rank 0: could not tell the other ranks that the coordinator exited: %s", error)
        deadline = time.monotonic() + 2.0  # a coordinator stops its workers itself; one it never reached is stopped here
        while self.worker.running and time.monotonic() < deadline:
            time.sleep(0.05)
        self.worker.stop("its coordinator exited")

    def _watch_store(self, rendezvous: Rendezvous) -> None:
        """Rank > 0: publish this worker under the current attempt (again when it changes) until the coordinator is done."""
        published: Optional[str] = None
        store_gone = False
        while self.worker.running:
            if self._stopping():
                self.worker.stop("signalled")
                return
            try:
                if not store_gone:
                    attempt = rendezvous.current()
                    if attempt is not None and attempt != published:
                        rendezvous.publish(attempt, self.record)
                        published = attempt
                    if published is not None and rendezvous.done(published, self.record.nonce) is not None:
                        self.worker.stop("its coordinator is done")
                        return
            except Exception as error:  # the store's host (the agent of the first node) is gone
                if self.worker.session is None:
                    log.error("rank %d: the group's store is gone (%s) and no coordinator configured this worker: exiting",
                              self.launch.rank, error)
                    self.worker.stop("the group's store is gone")
                    return
                store_gone = True  # the coordinator that configured this worker says when to stop, or falls silent
            time.sleep(POLL_SECONDS)


# -- the coordinator's process ------------------------------------------------------------

def coordinate_main(argv: Sequence[str]) -> int:
    """The coordinator rank 0 starts: `python -m dni.coordinator.elastic --attempt ID --parent PID [dni run flags]`."""
    parser = build_parser("dni.coordinator.elastic")
    parser.add_argument("--attempt", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, required=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    _logging("coordinator", args.log_level)
    INTERRUPTS.install()
    return report_run(lambda: coordinate(args))


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
    from dni.coordinator.run import job_data, run_job

    launch = Launch.from_environment()
    job = launched_job(args, launch)
    folder, attempts = launched_folder(job, launch, args.resume)
    data = job_data(job)  # while the workers start
    workers = Rendezvous.of(launch).gather(args.attempt, len(job.stages), GATHER_SECONDS)
    for record in workers:
        log.info("%s", record)
    annotations = {"run_id": launch.run_id, "restarts": launch.restart_count, "attempts": attempts,
                   "world_size": launch.world_size, "nodes": launch.nodes}
    return run_job(job, args.bind or tcp_address(group_host(launch)), args.advertise, "tcp", not args.no_progress,
                   resume=folder, endpoints=[record.endpoints for record in workers], annotations=annotations, data=data)


_held_locks: list[IO[str]] = []  # open for the life of the process: closing one lets go of its lock


def launched_folder(job: Job, launch: Launch, resume: Optional[Path]) -> tuple[RunFolder, int]:
    """This run's folder (named from the rendezvous id), held for this process, and how many times it was started.

    A folder that exists already is the same run started again (by torchrun after a failure, or by the
    same command given again): training resumes from its last checkpoint; a finished one is not run twice.
    """
    from dni.coordinator.run import RunComplete

    if resume is None and launch.run_id == "none":
        raise ConfigError("give torchrun --rdzv-id ID (or --standalone): the run folder is named from it, so a "
                          "restarted group finds its checkpoints")
    path = resume or Path(job.results) / f"{job.name}-{job.mode.value}-{re.sub(r'[^A-Za-z0-9_.-]', '_', launch.run_id)}"
    path.mkdir(parents=True, exist_ok=True)
    _held_locks.append(_lock(path / "coordinator.lock"))
    folder = RunFolder(path)
    table = json.loads(json.dumps(job_as_table(job)))
    if (path / "job.json").is_file():
        stored = json.loads((path / "job.json").read_text())
        differ = sorted(key for key in {*table, *stored} if key not in NOT_COMPARED and table.get(key) != stored.get(key))
        if differ:
            raise ConfigError(f"{path} holds a run of another job (it differs in {', '.join(differ)}): give another "
                              "--rdzv-id, or --results elsewhere")
        if folder.summary_path.is_file() and json.loads(folder.summary_path.read_text()).get("status") == "complete":
            raise RunComplete(f"{path} already finished; nothing to resume (give another --rdzv-id for a new run)")
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
    """Let go of the run folders this process holds (it exits holding them otherwise)."""
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


def _logging(who: str, level: str) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s {who} %(name)s %(levelname)s %(message)s", force=True)


if __name__ == "__main__":
    exit_now(coordinate_main(sys.argv[1:]))
