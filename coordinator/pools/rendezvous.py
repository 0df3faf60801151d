"""How the ranks of a torchrun group find each other: which worker serves which stage, and where.

torchrun (torch.distributed.elastic) tells every rank who it is (RANK, WORLD_SIZE,
LOCAL_RANK, ...) and where its agents keep a key-value store (a TCPStore at
MASTER_ADDR:MASTER_PORT). Each rank's worker binds ports of its own choosing and
publishes them there; the coordinator (started by rank 0) reads them. Nobody types
an address, and no port is picked free and then bound by another process first.

The store outlives a restart of the group, so the keys of an earlier attempt are
still there, and TORCHELASTIC_RESTART_COUNT may differ between nodes (an agent
restarting because another node failed does not count it). So rank 0 names each
attempt with a random id, which no earlier attempt used:

    dni/attempt               the current attempt's id, set by its rank 0
    dni/<attempt>/stage<r>    rank r's worker: its three endpoints, host, pid, and a random nonce
    dni/<attempt>/done        set by rank 0 once its coordinator has exited: its exit code and
                              the nonces of the workers it served

A rank r > 0 publishes under the id it reads and again whenever the id changes (it
may first read the id of the previous attempt, whose rank 0 is gone). The
coordinator waits for every stage under its own id. A rank obeys `done` only if it
lists the rank's own nonce, so the `done` of an earlier attempt never stops it.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Mapping, Optional

from dni.errors import ConfigError, PipelineError
from dni.protocol import Endpoints

__all__ = ["Launch", "PREFIX", "Rendezvous", "WorkerRecord", "new_nonce"]

PREFIX = "dni"


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process about itself and its group."""
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    nodes: int  # GROUP_WORLD_SIZE: agents (hosts) in the group
    store_host: str  # MASTER_ADDR
    store_port: int  # MASTER_PORT
    run_id: str  # TORCHELASTIC_RUN_ID: --rdzv-id, a fresh uuid with --standalone, "none" when not given
    restart_count: int  # TORCHELASTIC_RESTART_COUNT: restarts of this node's agent so far
    max_restarts: int

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] = os.environ) -> "Launch":
        needed = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
        missing = [name for name in needed if name not in environment]
        if missing:
            raise ConfigError(f"dni.launch runs under torchrun (it sets {', '.join(missing)}): "
                              "torchrun --standalone --nproc-per-node STAGES -m dni.launch JOB; "
                              "on one machine without torchrun, use `dni run JOB`")
        try:
            world_size = int(environment["WORLD_SIZE"])
            return cls(
                rank=int(environment["RANK"]), local_rank=int(environment["LOCAL_RANK"]), world_size=world_size,
                local_world_size=int(environment.get("LOCAL_WORLD_SIZE", world_size)),
                nodes=int(environment.get("GROUP_WORLD_SIZE", 1)),
                store_host=environment["MASTER_ADDR"], store_port=int(environment["MASTER_PORT"]),
                run_id=environment["TORCHELASTIC_RUN_ID"],
                restart_count=int(environment.get("TORCHELASTIC_RESTART_COUNT", 0)),
                max_restarts=int(environment.get("TORCHELASTIC_MAX_RESTARTS", 0)),
            )
        except ValueError as error:
            raise ConfigError(f"torchrun's environment is not what dni.launch expects: {error}") from error


@dataclass(frozen=True)
class WorkerRecord:
    """One rank's worker as it publishes itself."""
    stage: int
    endpoints: Endpoints
    host: str
    pid: int
    nonce: str

    def to_bytes(self) -> bytes:
        return json.dumps({**asdict(self), "endpoints": asdict(self.endpoints)}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "WorkerRecord":
        record = json.loads(data)
        return cls(record["stage"], Endpoints(**record["endpoints"]), record["host"], record["pid"], record["nonce"])

    def __str__(self) -> str:
        return f"stage {self.stage} (pid {self.pid} on {self.host}, control {self.endpoints.control})"


def new_nonce() -> str:
    return secrets.token_hex(8)


class Rendezvous:
    """A client of the group's store (torch.distributed.TCPStore); one per thread that uses it."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        from torch.distributed import TCPStore

        self.timeout = timeout
        self.store = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout), wait_for_workers=False)

    @classmethod
    def of(cls, launch: Launch, timeout: float = 60.0) -> "Rendezvous":
        return cls(launch.store_host, launch.store_port, timeout)

    def _get(self, key: str) -> Optional[bytes]:
        return self.store.get(key) if self.store.check([key]) else None

    # -- rank 0 --------------------------------------------------------------------

    def begin(self) -> str:
        """A new attempt: its id, from now on the one every rank publishes under."""
        attempt = new_nonce()
        self.store.set(f"{PREFIX}/attempt", attempt)
        return attempt

    def gather(self, attempt: str, stages: int, timeout: float) -> list[WorkerRecord]:
        """Every stage's worker of this attempt, in stage order; waits up to `timeout` seconds for them."""
        keys = [f"{PREFIX}/{attempt}/stage{stage}" for stage in range(stages)]
        try:
            self.store.wait(keys, timedelta(seconds=timeout))
        except Exception as error:  # torch.distributed.DistStoreError: a timeout, or the store went away
            missing = [stage for stage, key in enumerate(keys) if not self._safe_check(key)]
            raise PipelineError(f"the workers of stage(s) {', '.join(map(str, missing)) or '?'} did not publish their "
                                f"addresses within {timeout:.0f}s ({type(error).__name__}: {error})") from error
        return [WorkerRecord.from_bytes(self.store.get(key)) for key in keys]

    def _safe_check(self, key: str) -> bool:
        try:
            return bool(self.store.check([key]))
        except Exception:  # the store is gone: nothing can be said
            return False

    def finish(self, attempt: str, code: int, stages: int) -> None:
        """Tell every rank of this attempt that its coordinator has exited (with `code`)."""
        nonces = []
        for stage in range(stages):
            data = self._get(f"{PREFIX}/{attempt}/stage{stage}")
            if data is not None:
                nonces.append(WorkerRecord.from_bytes(data).nonce)
        self.store.set(f"{PREFIX}/{attempt}/done", json.dumps({"code": code, "nonces": nonces}))

    # -- every rank ----------------------------------------------------------------

    def current(self) -> Optional[str]:
        """The id of the latest attempt whose rank 0 has started (maybe an earlier one's)."""
        data = self._get(f"{PREFIX}/attempt")
        return data.decode() if data is not None else None

    def publish(self, attempt: str, record: WorkerRecord) -> None:
        self.store.set(f"{PREFIX}/{attempt}/stage{record.stage}", record.to_bytes())  # type: ignore[arg-type]  # takes bytes; torch's stub says str

    def done(self, attempt: str, nonce: str) -> Optional[dict[str, Any]]:
        """The coordinator's exit, if the attempt's rank 0 has announced it to this worker (by its `nonce`)."""
        data = self._get(f"{PREFIX}/{attempt}/done")
        if data is None:
            return None
        done = json.loads(data)
        return done if nonce in done.get("nonces", []) else None
