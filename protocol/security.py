"""CURVE encryption and authentication of ZeroMQ sockets (pyzmq's `zmq.auth`).

One key directory, made by `create_keys` (`dni keys DIR`) and copied to every
host of a deployment, holds everything a process needs:

    DIR/server.key, DIR/server.key_secret   every binding socket (workers, the coordinator's inbox)
    DIR/client.key, DIR/client.key_secret   every connecting socket
    DIR/authorized/*.key                    public keys allowed to connect (client.key; add more)

A binding socket is a CURVE server with the server key pair; a ZAP handler
(`start_authenticator`, one per context with server sockets) admits only clients
whose public key is in `authorized/`. Without a completed handshake ZeroMQ
delivers nothing, so an unauthorised peer's messages never reach the
application. Plaintext is allowed only where no socket reaches beyond this
machine (`check_plaintext_allowed`).
"""
from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from dni.protocol.errors import ProtocolError

__all__ = [
    "FIX", "Keys", "check_plaintext_allowed", "create_keys", "listens_beyond_loopback", "load_keys", "make_server",
    "secure_context", "start_authenticator",
]

log = logging.getLogger("dni.security")

SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"
FIX = ("create keys once with `dni keys DIR`, give every host a copy of DIR and pass --keys DIR "
       "(job file: keys = \"DIR\")")


@dataclass(frozen=True)
class Keys:
    """A loaded key directory; z85-encoded keys, secrets kept out of repr."""

    directory: Path
    server_public: bytes
    client_public: bytes
    authorized: frozenset[bytes]
    server_secret: bytes = field(repr=False)
    client_secret: bytes = field(repr=False)


def create_keys(directory: Union[str, os.PathLike]) -> Path:
    """Make a key directory (server and client key pairs, client key authorised); never overwrites keys."""
    directory = Path(directory)
    existing = [directory / f"{name}.{suffix}" for name in (SERVER, CLIENT) for suffix in ("key", "key_secret")]
    if any(path.exists() for path in existing) or (directory / AUTHORIZED).exists():
        raise ProtocolError(f"{directory} already holds keys; remove them or choose another directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / AUTHORIZED).mkdir(mode=0o755)
    for name in (SERVER, CLIENT):
        public, secret = zmq.curve_keypair()
        _write(directory / f"{name}.key", _certificate(public), 0o644)
        _write(directory / f"{name}.key_secret", _certificate(public, secret), 0o600)
        if name == CLIENT:
            _write(directory / AUTHORIZED / f"{CLIENT}.key", _certificate(public), 0o644)
    return directory


def _certificate(public: bytes, secret: bytes = b"") -> str:
    """The ZeroMQ certificate format that `zmq.auth.load_certificate` reads."""
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate: do not share" if secret else "Public Certificate"),
             "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    """Create `path` with `mode` from the start, so a secret is never readable by others, even briefly."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(path, mode)  # the umask may have narrowed it


def load_keys(directory: Union[str, os.PathLike]) -> Keys:
    """The keys in `directory`; a missing or garbled file raises ProtocolError naming its path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProtocolError(f"key directory {directory} does not exist; {FIX}")
    server_public, server_secret = _pair(directory / f"{SERVER}.key_secret")
    client_public, client_secret = _pair(directory / f"{CLIENT}.key_secret")
    folder = directory / AUTHORIZED
    if not folder.is_dir():
        raise ProtocolError(f"{folder} is missing: it holds the public keys allowed to connect; {FIX}")
    authorized = frozenset(_public(path) for path in sorted(folder.glob("*.key")))
    if not authorized:
        raise ProtocolError(f"{folder} holds no *.key file, so no peer could connect; {FIX}")
    return Keys(directory.resolve(), server_public, client_public, authorized, server_secret, client_secret)


def _pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _read(path)
    if not secret:
        raise ProtocolError(f"{path} holds no secret-key; {FIX}")
    return public, secret


def _public(path: Path) -> bytes:
    return _read(path)[0]


def _read(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ProtocolError(f"cannot read key file {path}: {error}; {FIX}") from error
    for key in (public, secret):
        if key is not None and not _valid_key(key):
            raise ProtocolError(f"{path} holds a garbled key (not a 40-character z85 CURVE key); {FIX}")
    return public, secret or b""


def _valid_key(key: bytes) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def make_server(socket: zmq.Socket, keys: Keys) -> zmq.Socket:
    """A CURVE server: call before bind; peers must know the server public key and hold an authorised key."""
    socket.curve_secretkey = keys.server_secret
    socket.curve_publickey = keys.server_public
    socket.curve_server = True
    return socket


class _Authorized:
    """The ZAP credentials callback: admits exactly the public keys in `authorized/`."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys.authorized
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.denied += 1
        if self.denied & (self.denied - 1) == 0:  # the 1st, 2nd, 4th, 8th... refusal
            log.warning("refused a connection from an unauthorised CURVE key %s (refusal #%d)", key.decode(errors="replace"), self.denied)
        return False


class _Authenticator(ThreadAuthenticator):
    def curve_user_id(self, client_public_key: bytes) -> str:
        """No ZAP User-Id: with one, libzmq 4.3 queues a 'credential' message ahead of a peer's first message,
        which wakes a poller with nothing to read (a receive then fails with EAGAIN)."""
        return ""


def start_authenticator(context: zmq.Context, keys: Keys) -> ThreadAuthenticator:
    """Start the ZAP handler of `context` before its first server socket binds; stop it before destroying the context."""
    authenticator = _Authenticator(context, log=logging.getLogger("dni.security.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=_Authorized(keys))
    return authenticator


def secure_context(context: zmq.Context, keys: Keys) -> ThreadAuthenticator:
    """Start `context`'s ZAP handler and make every socket it creates from now on a CURVE client.

    Client settings become the context's default socket options, so no connecting
    socket (data paths, reports, heartbeat threads) can be left in plaintext;
    binding sockets still call `make_server` before they bind. Stop the returned
    authenticator before destroying the context.
    """
    authenticator = start_authenticator(context, keys)
    context.curve_secretkey = keys.client_secret
    context.curve_publickey = keys.client_public
    context.curve_serverkey = keys.server_public
    return authenticator


def listens_beyond_loopback(address: str) -> bool:
    """Whether traffic on `address` can leave this machine: tcp://*, 0.0.0.0, or any host but 127.x, ::1, localhost.

    ipc:// and inproc:// are local; unknown transports count as exposed.
    """
    if address.startswith(("ipc://", "inproc://")):
        return False
    if not address.startswith("tcp://"):
        return True
    for part in address[len("tcp://"):].split(";"):  # a connect address may name a source: tcp://src;dst
        host = part.rpartition(":")[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return True
    return False


def check_plaintext_allowed(addresses: Iterable[str], what: str = "address") -> None:
    """Raise ProtocolError, naming the fix, if running without keys would expose any of `addresses`."""
    exposed = [address for address in addresses if listens_beyond_loopback(address)]
    if exposed:
        raise ProtocolError(
            f"{what}{'es' * (len(exposed) > 1)} {', '.join(exposed)} reach{'es' * (len(exposed) == 1)} beyond this machine, "
            f"so CURVE keys are required: {FIX}. "
            "Running without keys (--insecure) is allowed only on loopback (tcp://127.0.0.1) and ipc:// addresses")
