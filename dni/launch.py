"""`torchrun [torchrun flags] -m dni.launch JOB [dni run flags]`: one rank of a torchrun group (see README, "Several machines").

torchrun starts one process per rank, on one host or many, and restarts them all
when one dies (`--max-restarts`). Rank r serves stage r: it binds a worker on
ports of its own choosing, on this host's address towards the group's store
(loopback when the group has one node), and publishes them in the store
(coordinator/pools/rendezvous.py). Rank 0 also starts the coordinator
(`python -m dni.coordinator.pools.elastic`), in a process of its own so that it shares
no interpreter lock with stage 0.

Signals: torchrun stops a rank with SIGINT or SIGTERM (then SIGKILL 30 s later).
Rank 0 passes the signal on to its coordinator, which checkpoints if every stage
is still there and stops every worker; a worker keeps serving meanwhile, for at
most GRACE seconds, so that checkpoint can be taken. A second signal stops at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional, Sequence

import zmq

from dni.coordinator.pools.elastic import build_parser, configure_logging, group_host, launched_job, tell_torchrun
from dni.coordinator.jobs.job import Job
from dni.coordinator.pools.rendezvous import Launch, Rendezvous, WorkerRecord, new_nonce
from dni.errors import DniError, PipelineError
from dni.lifetime import exit_now
from dni.protocol import tcp_address
from dni.protocol.security import Keys, check_plaintext_allowed, load_keys

__all__ = ["Rank", "main", "serve_rank"]

log = logging.getLogger("dni.launch")
GRACE = 20.0  # after a signal, how long a worker waits for its coordinator to checkpoint and stop it
COORDINATOR_GRACE = 25.0  # after a signal, how long rank 0 waits for its coordinator (torchrun kills at 30 s)
POLL_SECONDS = 0.25


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m dni.launch`: one rank of a torchrun group."""
    exit_now(serve_rank(list(sys.argv[1:] if argv is None else argv)))


def serve_rank(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        launch = Launch.from_environment()
    except DniError as error:
        configure_logging("dni.launch", "WARNING")
        log.error("%s", error)
        return error.exit_code
    configure_logging(f"rank {launch.rank}", "WARNING")
    log.setLevel(args.log_level)
    return Rank(launch, argv).run(args)


def _worker_keys(job: Job) -> Optional[Keys]:
    """The job's CURVE keys (--keys or `keys =`), unless insecure; the worker refuses to bind beyond loopback without."""
    return load_keys(job.keys) if job.keys and not job.insecure else None


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
            keys = _worker_keys(job)
            if keys is None:  # as the worker would refuse, but before the store is asked anything
                check_plaintext_allowed([tcp_address(host, "0")], "worker address")
            rendezvous = self._store()
            if rank == 0:  # the coordinator starts first: its start-up overlaps this worker's
                attempt = rendezvous.begin()
                self.coordinator = self._start_coordinator(attempt)
            from dni.workers.cli import import_lazy_modules
            from dni.workers.loop.worker import Worker

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
        command = [sys.executable, "-m", "dni.coordinator.pools.elastic", "--attempt", attempt, "--parent", str(os.getpid()), *self.argv]
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
        coordinator = self.coordinator
        assert coordinator is not None, "only rank 0 watches a coordinator"
        while True:
            try:
                code = coordinator.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if self.signalled_at is not None and time.monotonic() - self.signalled_at > COORDINATOR_GRACE:
                    log.error("rank 0: the coordinator did not stop within %.0fs of the signal: killing it", COORDINATOR_GRACE)
                    coordinator.kill()
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
        record = self.record
        assert record is not None, "a rank publishes its worker once it serves"
        while self.worker.running:
            if self._stopping():
                self.worker.stop("signalled")
                return
            try:
                if not store_gone:
                    attempt = rendezvous.current()
                    if attempt is not None and attempt != published:
                        rendezvous.publish(attempt, record)
                        published = attempt
                    if published is not None and rendezvous.done(published, record.nonce) is not None:
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


if __name__ == "__main__":
    main()
