"""The wire format: msgpack headers and raw tensor frames over ZeroMQ. Knows nothing about training."""
from dni.protocol.codec import ALLOWED_DTYPES, DEFAULT_LIMITS, Limits, decode, encode
from dni.protocol.endpoints import (
    Endpoints, address_towards, connectable, free_port_block, resolvable, resolved, tcp_address, worker_endpoints,
)
from dni.protocol.errors import ProtocolError
from dni.protocol.messages import PROTOCOL_VERSION, Kind, Message
from dni.protocol.outbox import Outbox, Outboxes
from dni.protocol.transport import open_socket, receive_frames, receive_message, send_message

__all__ = [
    "ALLOWED_DTYPES", "DEFAULT_LIMITS", "Endpoints", "Kind", "Limits", "Message", "Outbox", "Outboxes", "PROTOCOL_VERSION",
    "ProtocolError", "address_towards", "connectable", "decode", "encode", "free_port_block", "open_socket",
    "receive_frames", "receive_message", "resolvable", "resolved", "send_message", "tcp_address", "worker_endpoints",
]
