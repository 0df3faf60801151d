"""Where a worker listens: one base address gives its three sockets.

A worker is named by a single address (what a user writes in a job file or a
compose file); the control, forward and backward sockets are derived from it so
that the coordinator and the neighbours agree without further configuration.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from dni.protocol.errors import ProtocolError

__all__ = [
    "Endpoints", "address_towards", "connectable", "free_port_block", "resolvable", "resolved", "tcp_address",
    "worker_endpoints",
]


@dataclass(frozen=True)
class Endpoints:
    control: str
    forward: str
    backward: str


def worker_endpoints(base: str) -> Endpoints:
    """tcp://host:P -> ports P, P+1, P+2; tcp://host:0 -> three ports the system picks when they are bound;
    ipc://path -> path.control, path.forward, path.backward."""
    if base.startswith("ipc://"):
        return Endpoints(f"{base}.control", f"{base}.forward", f"{base}.backward")
    if base.startswith("tcp://"):
        host, _, port = base[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65534:
            raise ProtocolError(f"address {base!r} must look like tcp://HOST:PORT")
        first = int(port)
        if first == 0:
            return Endpoints(*[f"tcp://{host}:*"] * 3)
        return Endpoints(*(f"tcp://{host}:{first + offset}" for offset in range(3)))
    raise ProtocolError(f"address {base!r} must start with tcp:// or ipc://")


def connectable(address: str, host: str) -> str:
    """An address bound on a wildcard (tcp://*:P or tcp://0.0.0.0:P) as peers on `host` reach it."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if address.startswith(wildcard):
            return f"tcp://{host}:{address[len(wildcard):]}"
    return address


def resolved(address: str) -> str:
    """tcp://name:P as tcp://ip:P, resolved now; any other address unchanged.

    ZeroMQ resolves names in its I/O thread, blocking it: while a dead peer's name
    fails to resolve (a removed container, say) every socket of the context waits,
    and closing the context can take seconds. Resolving once, up front, avoids both.
    A name that does not resolve yet is left for ZeroMQ to retry.
    """
    if not address.startswith("tcp://"):
        return address
    host, _, port = address[len("tcp://"):].rpartition(":")
    if host.startswith("[") or host in ("*", "0.0.0.0") or not port.isdigit():
        return address
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    except OSError:
        return address
    ip = sockaddr[0]
    return f"tcp://[{ip}]:{port}" if family == socket.AF_INET6 else f"tcp://{ip}:{port}"


def resolvable(address: str, within: float) -> bool:
    """Whether a tcp:// address's name resolves within `within` seconds (a lookup of a vanished name can hang for
    many seconds; this one is given up on, left to finish in the background)."""
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://"):].rpartition(":")[0]
    outcome: list[bool] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, None)
            outcome.append(True)
        except OSError:
            outcome.append(False)

    lookup = threading.Thread(target=look_up, daemon=True)
    lookup.start()
    lookup.join(within)
    return outcome == [True]


def address_towards(peer: str, port: int = 9) -> str:
    """This host's IP address on the route to `peer` (a name or an address): the one `peer`'s side of
    the network reaches us at. Nothing is sent (a UDP socket is only connected); raises OSError when
    `peer` does not resolve or no route leads there."""
    family, _, _, _, sockaddr = socket.getaddrinfo(peer, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        return probe.getsockname()[0]


def tcp_address(host: str, port: str = "*") -> str:
    """tcp://host:port, with an IPv6 address in brackets."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def free_port_block(size: int = 3) -> int:
    """A base port P such that P..P+size-1 are free on loopback now, for what must be given fixed ports
    (a worker's base address, a gloo rendezvous); what binds its own port 0 needs none of this."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size < 65535 and all(_port_free(base + offset) for offset in range(size)):
            return base
    raise OSError("no block of free ports on loopback")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
