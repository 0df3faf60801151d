"""coordinator/pools/rendezvous.py: a rank reads who it is from torchrun's environment, and the ranks of one attempt
find each other in a key-value store (here a TCPStore on loopback, in this process) without an earlier attempt's keys
misleading them."""
from __future__ import annotations

from datetime import timedelta

import pytest
from torch.distributed import TCPStore

from dni.coordinator.pools.rendezvous import Launch, Rendezvous, WorkerRecord
from dni.errors import ConfigError
from dni.protocol import Endpoints


def test_launch_reads_torchruns_environment_and_says_how_to_start_without_it():
    launch = Launch.from_environment({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "1",
                                      "GROUP_WORLD_SIZE": "3", "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
                                      "TORCHELASTIC_RUN_ID": "job7", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert (launch.rank, launch.nodes, launch.store_host, launch.run_id, launch.restart_count) == (2, 3, "node0", "job7", 1)
    with pytest.raises(ConfigError, match="runs under torchrun"):
        Launch.from_environment({})


def test_workers_publish_under_the_current_attempt_and_obey_only_their_own_done():
    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    rank0, rank1 = Rendezvous("127.0.0.1", server.port, 10), Rendezvous("127.0.0.1", server.port, 10)
    old = rank0.begin()
    stale = WorkerRecord(1, Endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"), "h", 1, "old")
    rank1.publish(old, stale)
    rank0.finish(old, 130, 2)  # the earlier attempt's end, still in the store after a restart
    fresh = WorkerRecord(1, Endpoints("tcp://127.0.0.1:4", "tcp://127.0.0.1:5", "tcp://127.0.0.1:6"), "h", 2, "new")
    assert rank1.current() == old and rank1.done(old, fresh.nonce) is None, "another worker's done stops nobody else"
    attempt = rank0.begin()
    assert rank1.current() == attempt != old
    rank1.publish(attempt, fresh)
    rank0.publish(attempt, WorkerRecord(0, stale.endpoints, "h", 3, "zero"))
    assert [record.endpoints for record in rank0.gather(attempt, 2, timeout=5)] == [stale.endpoints, fresh.endpoints]
    rank0.finish(attempt, 0, 2)
    assert rank1.done(attempt, "new") == {"code": 0, "nonces": ["zero", "new"]}
    with pytest.raises(Exception, match="stage.s. 2 did not publish"):
        rank0.gather(attempt, 3, timeout=1)
