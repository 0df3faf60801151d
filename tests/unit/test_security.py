"""protocol/security.py: CURVE key directories, which addresses reach beyond this machine, and a CURVE server
socket that never wakes a poller without a message (in-process sockets on loopback)."""
from __future__ import annotations

import os
import re
import stat
import time

import pytest
import zmq

from dni.protocol import free_port_block
from dni.protocol import ProtocolError
from dni.protocol.security import create_keys, listens_beyond_loopback, load_keys, make_server, secure_context


@pytest.fixture
def keys(tmp_path):
    return load_keys(create_keys(tmp_path / "keys"))


def test_key_directory(tmp_path):
    directory = create_keys(tmp_path / "keys")
    for name in ("server", "client"):
        assert stat.S_IMODE(os.stat(directory / f"{name}.key_secret").st_mode) == 0o600
    keys = load_keys(directory)
    assert keys.authorized == {keys.client_public} and keys.server_public != keys.client_public
    assert keys.client_secret.decode() not in repr(keys) and keys.server_secret.decode() not in repr(keys)
    with pytest.raises(ProtocolError, match="already holds keys"):
        create_keys(directory)
    (directory / "server.key_secret").write_text('curve\n    public-key = "short"\n    secret-key = "short"\n')
    with pytest.raises(ProtocolError, match=re.escape(str(directory / "server.key_secret")) + ".*garbled"):
        load_keys(directory)
    (directory / "server.key_secret").unlink()
    with pytest.raises(ProtocolError, match=re.escape(str(directory / "server.key_secret"))):
        load_keys(directory)


@pytest.mark.parametrize("address, exposed", [
    ("tcp://*:5555", True), ("tcp://0.0.0.0:5555", True), ("tcp://10.0.0.7:5555", True), ("tcp://worker-a:5555", True),
    ("tcp://[::]:5555", True), ("tcp://127.0.0.1:5555", False), ("tcp://127.3.2.1:*", False), ("tcp://localhost:5555", False),
    ("tcp://[::1]:5555", False), ("ipc:///tmp/dni/stage0", False),
])
def test_listens_beyond_loopback(address, exposed):
    assert listens_beyond_loopback(address) is exposed


def test_a_curve_server_never_wakes_a_poller_without_a_message(keys):
    """A worker polls, then receives without blocking: a wake-up with nothing to read would kill it."""
    for _ in range(3):
        port = free_port_block(1)
        client_context, server_context = zmq.Context(), zmq.Context()
        client_auth = secure_context(client_context, keys)
        server_auth = secure_context(server_context, keys)
        try:
            push = client_context.socket(zmq.PUSH)
            push.connect(f"tcp://127.0.0.1:{port}")  # before the server binds, as the coordinator may
            pull = make_server(server_context.socket(zmq.PULL), keys)
            pull.bind(f"tcp://127.0.0.1:{port}")
            time.sleep(0.3)
            push.send_multipart([b"header", b"x" * 50_000])
            received = []
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                if pull.poll(100):
                    received.append(pull.recv_multipart(zmq.NOBLOCK))  # raises zmq.Again on a spurious wake-up
            assert received == [[b"header", b"x" * 50_000]]
        finally:
            client_auth.stop()
            server_auth.stop()
            client_context.destroy(linger=0)
            server_context.destroy(linger=0)
