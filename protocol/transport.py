"""Moving messages over ZeroMQ sockets without copying tensor memory."""
from __future__ import annotations

from typing import Optional, Sequence

import zmq

from dni.protocol.codec import DEFAULT_LIMITS, Limits, decode, encode
from dni.protocol.messages import Message

__all__ = ["ZERO_COPY_THRESHOLD", "open_socket", "receive_frames", "receive_message", "send_message"]

ZERO_COPY_THRESHOLD = 1 << 20  # `dni bench transport`: below ~1 MiB copying is as fast as zero-copy


def open_socket(context: zmq.Context, kind: int, limits: Limits = DEFAULT_LIMITS) -> zmq.Socket:
    """A socket that refuses oversized messages at the transport and never blocks on close."""
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max(limits.max_frame_bytes, limits.max_header_bytes))
    return socket


def send_message(socket: zmq.Socket, message: Message, envelope: Sequence[bytes] = (), flags: int = 0,
                 copy: Optional[bool] = None) -> None:
    """Send one message; with zmq.NOBLOCK, raises zmq.Again instead of waiting for a slow peer.

    `copy=None` copies small messages and hands large tensor frames to ZeroMQ without copying.
    """
    frames = [*envelope, *encode(message)]
    if copy is None:
        copy = sum(memoryview(frame).nbytes for frame in frames) < ZERO_COPY_THRESHOLD
    socket.send_multipart(frames, flags=flags, copy=copy)


def receive_frames(socket: zmq.Socket, flags: int = 0) -> list:
    return socket.recv_multipart(flags=flags, copy=False)


def receive_message(socket: zmq.Socket, limits: Limits = DEFAULT_LIMITS) -> Message:
    return decode(receive_frames(socket), limits)
