"""coordinator/pools/pool.py: which pool a job gets, where its coordinator's inbox binds, and how a lost remote worker is replaced."""
from __future__ import annotations

import pytest

from dni import load_job
from dni.coordinator.jobs.job import with_addresses
from dni.coordinator.pools.launcher import LocalWorkers
from dni.errors import WorkerLost
from dni.coordinator.pools.pool import RemoteWorkers, pool_for
from dni.protocol import Endpoints

ADDRESSES = ["tcp://stage0:5555", "tcp://stage1:5555", "tcp://stage2:5555"]


def remote_job(**settings):
    return with_addresses(load_job("mnist-smoke", settings), ADDRESSES)


def test_a_job_without_addresses_gets_local_processes_whose_inbox_lies_in_their_folder():
    pool = pool_for(load_job("mnist-smoke"), keys=None)
    assert isinstance(pool, LocalWorkers) and pool.count == 3
    assert pool.inbox == f"ipc://{pool.directory}/coordinator" and not pool.directory.exists(), "made only by start"
    assert (pool.host, pool.start_seconds, pool.builds_here) == ("127.0.0.1", 60.0, True)
    assert pool_for(load_job("mnist-smoke"), keys=None, transport="tcp").inbox == "tcp://127.0.0.1:*"
    assert pool_for(load_job("mnist-smoke"), keys=None, bind="tcp://127.0.0.1:7000").inbox == "tcp://127.0.0.1:7000"


def test_a_job_with_addresses_gets_the_remote_workers_there():
    pool = pool_for(remote_job(rejoin_seconds=7), keys=None)
    assert isinstance(pool, RemoteWorkers)
    assert pool.endpoints[1] == Endpoints("tcp://stage1:5555", "tcp://stage1:5556", "tcp://stage1:5557")
    assert (pool.rejoin_seconds, pool.start_seconds, pool.builds_here) == (7, 300.0, False)


def test_the_remote_inbox_is_on_loopback_without_keys_on_every_interface_with_them_and_bind_wins():
    assert pool_for(remote_job(), keys=None).inbox == "tcp://127.0.0.1:5550"
    assert pool_for(remote_job(), keys=object()).inbox == "tcp://0.0.0.0:5550"  # type: ignore[arg-type]
    assert pool_for(remote_job(), keys=None, bind="tcp://10.0.0.1:6000").inbox == "tcp://10.0.0.1:6000"


def test_a_lost_remote_worker_is_awaited_at_its_address_unless_rejoin_seconds_is_zero():
    endpoints = [Endpoints(f"tcp://stage{i}:5555", f"tcp://stage{i}:5556", f"tcp://stage{i}:5557") for i in range(3)]
    loss = WorkerLost(1, "stage 1 lost its connection")
    assert RemoteWorkers(endpoints, 60, "tcp://127.0.0.1:5550").replace(loss) == endpoints[1]
    with pytest.raises(WorkerLost) as raised:
        RemoteWorkers(endpoints, 0, "tcp://127.0.0.1:5550").replace(loss)
    assert raised.value is loss, "the loss itself, naming what happened"
