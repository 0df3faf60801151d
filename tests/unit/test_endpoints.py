"""protocol/endpoints.py: one base address gives a worker's three sockets; wildcards and names become connectable
addresses; a name that does not resolve in time is given up on."""
from __future__ import annotations

import pytest

from dni.protocol import Endpoints, ProtocolError, connectable, resolvable, resolved, worker_endpoints


def test_worker_endpoints_derive_three_sockets_from_one_address():
    assert worker_endpoints("tcp://stage1:5555") == Endpoints("tcp://stage1:5555", "tcp://stage1:5556", "tcp://stage1:5557")
    assert worker_endpoints("ipc:///tmp/x/stage0") == Endpoints(
        "ipc:///tmp/x/stage0.control", "ipc:///tmp/x/stage0.forward", "ipc:///tmp/x/stage0.backward")
    for bad in ("udp://x:1", "tcp://nohost", "tcp://h:port"):
        with pytest.raises(ProtocolError, match="address"):
            worker_endpoints(bad)


def test_port_zero_lets_the_system_pick_three_ports_and_the_last_ports_are_refused():
    assert worker_endpoints("tcp://127.0.0.1:0") == Endpoints(*["tcp://127.0.0.1:*"] * 3)
    assert worker_endpoints("tcp://h:65533").backward == "tcp://h:65535"
    with pytest.raises(ProtocolError, match=r"^address 'tcp://h:65534' must look like tcp://HOST:PORT$"):
        worker_endpoints("tcp://h:65534")
    with pytest.raises(ProtocolError, match=r"^address 'inproc://x' must start with tcp:// or ipc://$"):
        worker_endpoints("inproc://x")


def test_a_wildcard_address_becomes_one_peers_can_reach():
    assert connectable("tcp://*:5550", "coordinator") == "tcp://coordinator:5550"
    assert connectable("tcp://0.0.0.0:41234", "127.0.0.1") == "tcp://127.0.0.1:41234"
    assert connectable("tcp://10.0.0.2:5550", "elsewhere") == "tcp://10.0.0.2:5550"
    assert connectable("ipc:///tmp/x/coordinator", "elsewhere") == "ipc:///tmp/x/coordinator"


def test_names_are_resolved_once_up_front_and_other_addresses_left_alone():
    assert resolved("tcp://localhost:5555") in ("tcp://127.0.0.1:5555", "tcp://[::1]:5555")
    assert resolved("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"
    assert resolved("ipc:///tmp/x/stage0.control") == "ipc:///tmp/x/stage0.control"
    assert resolved("tcp://no-such-host.invalid:5555") == "tcp://no-such-host.invalid:5555", "left for ZeroMQ to retry"
    for unresolvable in ("tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://[::1]:5555", "tcp://h:*"):
        assert resolved(unresolvable) == unresolvable


def test_a_name_that_resolves_in_time_and_one_that_does_not():
    assert resolvable("tcp://localhost:5555", within=5.0)
    assert resolvable("ipc:///tmp/x", within=0.0)
    assert not resolvable("tcp://no-such-host.invalid:5555", within=5.0)
