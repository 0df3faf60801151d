"""A job's workers, wherever they run: what the coordinator needs of them, and which pool a job gets.

Local processes (`LocalWorkers`), workers started elsewhere at known addresses (`RemoteWorkers`:
compose, Swarm, `dni run --workers`) and torchrun's ranks (`dni.coordinator.pools.elastic`) differ only
here: where the coordinator's inbox binds, how long workers get to answer, whether a dead one
is seen before its connection drops, and how a lost one is replaced.
"""
from __future__ import annotations

import socket
from typing import Callable, Optional, Protocol

from dni.coordinator.jobs.job import Job
from dni.coordinator.pools.launcher import LocalWorkers
from dni.errors import WorkerLost
from dni.protocol import Endpoints, worker_endpoints
from dni.protocol.security import Keys

__all__ = ["RemoteWorkers", "WorkerPool", "pool_for"]


class WorkerPool(Protocol):
    """One worker per stage, as the coordinator uses them."""

    endpoints: list[Endpoints]  # where each stage's worker listens (known once started)
    inbox: str  # the address the coordinator's inbox binds
    host: str  # this host as the workers reach it, for an inbox bound on every interface
    start_seconds: float  # how long the workers have to answer at the start
    rejoin_seconds: float  # how long a replacement has to answer
    spawns: bool  # replaces a lost worker by starting one itself, so a replacement that is lost too is replaced again
    builds_here: bool  # the stages build on this machine, so their shapes are checked before any worker starts

    def start(self) -> None: ...

    def check(self) -> None:
        """Raise WorkerLost for a worker known to be gone; a no-op where that cannot be told."""

    def replace(self, loss: WorkerLost, keep_alive: Callable[[], None] = ...) -> Endpoints:
        """Where a new worker for the lost stage listens (the lost one ended first where it can be); raises `loss` when
        none can take over. `keep_alive` is called while it waits (the coordinator's beat to the other workers)."""

    def stop(self) -> None: ...


class RemoteWorkers:
    """Workers started elsewhere, at the job's stage addresses or at given endpoints; an orchestrator that
    restarts a lost one (compose, Swarm) brings it back at the same address within `rejoin_seconds`."""

    start_seconds = 300.0
    spawns = False  # what restarts a lost worker is the orchestrator's, which brings it back or not
    builds_here = False  # the workers build their stages, and their configure replies give the shapes

    def __init__(self, endpoints: list[Endpoints], rejoin_seconds: float, inbox: str, host: Optional[str] = None) -> None:
        self.endpoints = list(endpoints)
        self.rejoin_seconds = rejoin_seconds
        self.inbox = inbox
        self.host = host or socket.gethostname()

    def start(self) -> None:
        """Nothing to start: the workers run already."""

    def check(self) -> None:
        """Nothing to look at but their connections, which the pipeline watches."""

    def replace(self, loss: WorkerLost, keep_alive: Callable[[], None] = lambda: None) -> Endpoints:
        """The same address: a lost worker elsewhere cannot be signalled from here. A frozen one that wakes up
        finds its job gone (the coordinator has been silent to it, and speaks for a new job id) and ends it."""
        if not self.rejoin_seconds:
            raise loss
        return self.endpoints[loss.stage]

    def stop(self) -> None:
        """Nothing to stop: the coordinator has told each worker to end its job."""


def pool_for(job: Job, keys: Optional[Keys], bind: Optional[str] = None, transport: str = "ipc",
             log_level: str = "WARNING") -> WorkerPool:
    """Local worker processes, or the remote workers at the job's stage addresses; `bind` overrides the inbox."""
    addresses = [stage.address for stage in job.stages if stage.address is not None]  # every stage's, or none (Job)
    if not addresses:
        return LocalWorkers(len(job.stages), transport, log_level, keys.directory if keys else None, inbox=bind)
    default = "tcp://0.0.0.0:5550" if keys else "tcp://127.0.0.1:5550"
    return RemoteWorkers([worker_endpoints(address) for address in addresses], job.rejoin_seconds, bind or default)
