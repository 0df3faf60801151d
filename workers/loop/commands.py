"""The control commands a worker answers, as a table: the wire name, the handler.

The coordinator drives a worker over its control socket: `ping` (are you
there), `configure` (serve this stage of this job), `flush` (answered once no
batch awaits its target), `metrics`, `state` (every weight), `checkpoint`
(save the stage) and `stop` (end the job). The names are the `Command` enum,
so the set is closed and listed in one place; a name outside it is refused,
never looked up as an attribute. Handlers see the worker only through
`CommandHost`: its session, its endpoints, starting and ending a session.
"""
from __future__ import annotations

import enum
import os
import socket as host_socket
import time
from typing import Any, Callable, Optional, Protocol

from dni.protocol import Endpoints, Kind, Message
from dni.spec import StageAssignment
from dni.workers.stage.checkpoint import save_checkpoint
from dni.workers.loop.devices import arrays_on_host
from dni.spec import EXIT_STOPPED
from dni.workers.loop.session import Session
from dni.workers.loop.validation import Rejected

__all__ = ["COMMANDS", "Command", "CommandHost", "answer", "parse_command"]


class Command(str, enum.Enum):
    PING = "ping"
    CONFIGURE = "configure"
    FLUSH = "flush"
    METRICS = "metrics"
    STATE = "state"
    CHECKPOINT = "checkpoint"
    STOP = "stop"


class CommandHost(Protocol):
    """What the commands need of a worker."""
    session: Optional[Session]
    endpoints: Endpoints

    def start_session(self, config: StageAssignment) -> Session: ...

    def end_session(self, why: str, exit_code: int) -> None: ...


Handler = Callable[[CommandHost, bytes, Message], Optional[Message]]  # None: the reply comes later (flush)


def answer(host: CommandHost, identity: bytes, message: Message) -> Optional[Message]:
    """The reply to a decoded control message (None: none now); raises for a request it refuses.

    Any message of the current job, heartbeats included, shows that its coordinator is alive.
    """
    if host.session is not None and message.job == host.session.config.job:
        host.session.last_heard = time.monotonic()
    if message.kind is Kind.HEARTBEAT:
        return None
    if message.kind is not Kind.CONTROL:
        raise Rejected(f"{message.kind.name} is not accepted on the control socket")
    return COMMANDS[parse_command(message.meta)](host, identity, message)


def parse_command(meta: dict[str, Any]) -> Command:
    command = meta.get("command")
    if isinstance(command, str) and command in _NAMES:
        return Command(command)
    raise Rejected(f"unknown control command {command!r:.40}")


def _ok(**meta: Any) -> Message:
    return Message(Kind.REPLY, meta={"ok": True, **meta})


def _ping(host: CommandHost, identity: bytes, message: Message) -> Message:
    return _ok(pid=os.getpid(), endpoints=list(host.endpoints.__dict__.values()))


def _configure(host: CommandHost, identity: bytes, message: Message) -> Message:
    session = host.start_session(StageAssignment.from_wire(message.meta.get("config")))
    hostname = host_socket.gethostname()
    return _ok(pid=os.getpid(), hostname=hostname, ip=_ip_of(hostname), output_shape=list(session.output_shape),
               edge_shapes={edge: list(shape) for edge, shape in session.edge_shapes.items()},
               device=session.device, takes_labels=session.takes_labels)


def _flush(host: CommandHost, identity: bytes, message: Message) -> Optional[Message]:
    """Answered once no batch awaits its target, so the caller knows every update is done."""
    session = _require_session(host)
    if session.compute.in_flight:
        session.flush_waiters.append(identity)
        return None
    return _ok()


def _metrics(host: CommandHost, identity: bytes, message: Message) -> Message:
    session = _require_session(host)
    spans = session.timeline.span_arrays() if message.meta.get("spans") else {}
    metrics = session.metrics(profile=bool(message.meta.get("profile")))
    return Message(Kind.REPLY, meta={"ok": True, "metrics": metrics}, tensors=spans)


def _state(host: CommandHost, identity: bytes, message: Message) -> Message:
    state = _require_session(host).compute.state()
    return Message(Kind.REPLY, meta={"ok": True}, tensors=arrays_on_host(state))


def _checkpoint(host: CommandHost, identity: bytes, message: Message) -> Message:
    session = _require_session(host)
    path = message.meta.get("path")
    if not isinstance(path, str) or not path:
        raise Rejected("checkpoint needs a 'path'")
    if session.compute.in_flight:
        raise Rejected(f"{session.compute.in_flight} batches still await targets: flush before a checkpoint")
    save_checkpoint(path, session.compute)
    return _ok(steps=session.compute.steps)


def _stop(host: CommandHost, identity: bytes, message: Message) -> Message:
    host.end_session("the coordinator stopped it", EXIT_STOPPED)
    return _ok()


COMMANDS: dict[Command, Handler] = {
    Command.PING: _ping,
    Command.CONFIGURE: _configure,
    Command.FLUSH: _flush,
    Command.METRICS: _metrics,
    Command.STATE: _state,
    Command.CHECKPOINT: _checkpoint,
    Command.STOP: _stop,
}
_NAMES = frozenset(command.value for command in Command)


def _require_session(host: CommandHost) -> Session:
    if host.session is None:
        raise Rejected("this worker has no job configured")
    return host.session


def _ip_of(hostname: str) -> str:
    try:
        return host_socket.gethostbyname(hostname)
    except OSError:
        return "unknown"
