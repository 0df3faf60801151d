"""The coordinator's side of the wire: configure workers, feed batches, collect results.

One DEALER per worker carries control requests (each answered by a REPLY); one
PUSH per worker feeds its forward socket (the data to the stages that take it,
the labels to those that use them); one PULL inbox receives training and
evaluation results, heartbeats and error reports from every worker.

Every wait (`receive`, `request`) turns the same loop (`_turn`): write the
feeds' outboxes as far as their stages take them, watch the workers (at most every
CHECK_SECONDS), poll the inbox (and the awaited reply, and POLLOUT on a feed
that its stage did not take, and the interrupt wake-up), and take in everything
the inbox holds, so a stage's failure ends any wait at once, and a worker that
falls silent (dead, frozen, unreachable) ends it within the heartbeat timeout;
results that
arrive meanwhile are kept for `receive`. A batch is only ever put into the feed's
outbox (`dni.protocol.outbox`), never waited to send: with the job's
`link_delay_ms` it is due that much later, and the loop polls no longer than
until then. Control requests and heartbeats are never held.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from dni.errors import ConfigError, DniError, PipelineError, StageFailed, WorkerLost
from dni.graph import stage_label
from dni.coordinator.train.interrupts import INTERRUPTS, Interrupts
from dni.protocol import (DEFAULT_LIMITS, Endpoints, Kind, Limits, Message, Outbox, Outboxes, ProtocolError, decode, open_socket,
                          receive_message, resolvable, resolved, send_message)
from dni.protocol.linkdelay import poll_within
from dni.protocol.refusals import RefusalLog
from dni.protocol.security import Keys, check_plaintext_allowed, make_server, secure_context

if TYPE_CHECKING:
    from dni.coordinator.pools.pool import WorkerPool

__all__ = ["CHECK_SECONDS", "DISCONNECT_GRACE", "Pipeline"]

log = logging.getLogger("dni.pipeline")
DISCONNECT_GRACE = 3.0  # a worker whose connection dropped and did not come back this long is gone
CHECK_SECONDS = 0.1  # how often a busy loop looks at the workers' processes, connections and beats


class Pipeline:
    """The first `stages` workers of `pool` (all of them by default: a pool may serve jobs of fewer stages),
    whose health the loop watches through `pool.check`."""

    def __init__(self, job_id: str, pool: WorkerPool, stages: Optional[int] = None, limits: Limits = DEFAULT_LIMITS,
                 heartbeat_timeout: float = 10.0, hang_timeout: float = 300.0, keys: Optional[Keys] = None,
                 link_delay_ms: float = 0.0, interrupts: Interrupts = INTERRUPTS) -> None:
        self.job_id = job_id
        self.pool = pool
        self.endpoints = endpoints = pool.endpoints[:stages]
        self.limits = limits
        self.heartbeat_timeout = heartbeat_timeout
        self.hang_timeout = hang_timeout
        self.last_beat = 0.0
        if keys is None:  # plaintext only where no socket reaches beyond this machine
            check_plaintext_allowed([pool.inbox, *(e.control for e in endpoints)], "coordinator address")
        self.context = zmq.Context()
        # with keys, the inbox is a CURVE server and every other socket of this context a CURVE client
        self.authenticator = secure_context(self.context, keys) if keys is not None else None
        self.inbox = open_socket(self.context, zmq.PULL, limits)
        if keys is not None:
            make_server(self.inbox, keys)
        self.inbox.bind(pool.inbox)
        self.inbox_address = self.inbox.getsockopt_string(zmq.LAST_ENDPOINT)
        self.controls = [self._connect(zmq.DEALER, e.control) for e in endpoints]
        # a dead worker's connection drops at once (its kernel closes it); heartbeats would take seconds to say so
        self.monitors = [self._monitor(control) for control in self.controls]
        self.disconnected_at: list[Optional[float]] = [None] * len(endpoints)
        self.stopping: set[int] = set()  # stages told to stop, whose connections may drop any moment
        self.excused: set[int] = set()  # stages lost already, whose new workers are on their way: not judged again
        self.drops = [0] * len(endpoints)  # connections lost per stage: a request sent before one is never answered
        self.delay = link_delay_ms / 1000
        self.feeds = [self._feed(index, e) for index, e in enumerate(endpoints)]
        self.link = Outboxes(list(self.feeds))  # batches on their way to the stages
        self.results: deque[Message] = deque()
        self.refusals = RefusalLog(log, "input refused")
        self.interrupts = interrupts
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)
        if interrupts.fd is not None:
            self.poller.register(interrupts.fd, zmq.POLLIN)
        self.checks_due = 0.0
        self.names: tuple[str, ...] = ()  # a graph's stage names, which its messages add (a chain's: none)
        self.forget_silence()

    @property
    def stages(self) -> int:
        return len(self.endpoints)

    @staticmethod
    def _monitor(socket: zmq.Socket) -> zmq.Socket:
        return socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)

    def _reconnect(self, stage: int, endpoints: Endpoints) -> None:
        """The stage's control socket (and the feed, for stage 0) connect afresh, to `endpoints`."""
        self.endpoints[stage] = endpoints
        self.controls[stage].disable_monitor()
        self.monitors[stage].close(linger=0)
        self.controls[stage].close(linger=0)
        self.controls[stage] = self._connect(zmq.DEALER, endpoints.control)
        self.monitors[stage] = self._monitor(self.controls[stage])
        self.disconnected_at[stage] = None
        self.watched[stage] = False  # a new worker: silent until it serves a job
        self.link.drop()  # what it holds belongs to the lost attempt, which the trainer sends again
        self.feeds[stage].socket.close(linger=0)
        self.feeds[stage] = self._feed(stage, endpoints)
        self.link.all[:] = self.feeds

    def _feed(self, stage: int, endpoints: Endpoints) -> Outbox:
        return Outbox(self._connect(zmq.PUSH, endpoints.forward), self.delay, name=f"feed {stage}")

    def _connect(self, kind: int, address: str) -> zmq.Socket:
        socket = open_socket(self.context, kind, self.limits)
        socket.connect(resolved(address))
        return socket

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)

    # -- control -------------------------------------------------------------------

    def request(self, stage: int, command: str, meta: Optional[dict[str, Any]] = None, timeout: float = 60.0,
                stall_timeout: Optional[float] = None) -> Message:
        """Send a control command to one worker and wait for its reply, watching the workers meanwhile.

        With `stall_timeout`, the wait also ends once every stage has been idle that long (the reply
        waits on pipeline traffic that will never come, as a flush does when a target was lost).
        """
        socket = self.controls[stage]
        drops = self.drops[stage]
        send_message(socket, Message(Kind.CONTROL, self.job_id, meta={"command": command, **(meta or {})}))
        deadline = time.monotonic() + timeout
        while socket not in self._turn(0.2, awaited=socket):
            self._check_heartbeats()  # a frozen worker is lost whatever the coordinator waits for
            if self.drops[stage] != drops:  # even when a worker is back at once (a container restarted), it is a new one
                raise WorkerLost(stage, f"stage {stage} ({self.endpoints[stage].control}) lost its connection while "
                                        f"answering {command!r}: its worker died or was replaced")
            if time.monotonic() > deadline:
                raise PipelineError(f"stage {stage} ({self.endpoints[stage].control}) did not answer {command!r} within {timeout:.0f}s")
            if stall_timeout is not None and self.idle_for() > stall_timeout:
                raise StageFailed(stage, f"stage {stage} still waits for {self.status[stage].get('pending', '?')} target(s) "
                                         f"with every stage idle for {self.idle_for():.0f}s: a target was lost")
        reply = receive_message(socket, self.limits)
        if not reply.meta.get("ok"):
            raise _refusal(stage, command, reply.meta)
        self.last_seen[stage] = time.monotonic()
        if command == "configure":
            self.watched[stage] = True
        return reply

    def rejoin(self, stage: int, endpoints: Endpoints, timeout: float, replaceable: bool = True) -> None:
        """Follow the stage's new worker to `endpoints` and wait up to `timeout` seconds for it to answer there, as
        one restarted by its orchestrator (compose, Swarm) does at its old address; the name is resolved afresh
        each try, since the new one may live elsewhere. Meanwhile the other workers keep hearing the beat.
        A worker that does not answer is lost again (WorkerLost) where another can be started (`replaceable`);
        else the run cannot go on (StageFailed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if resolvable(endpoints.control, within=2.0):  # a stopped container's name may not resolve
                self._reconnect(stage, endpoints)
                try:
                    self.request(stage, "ping", timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                    return
                except PipelineError:
                    continue
            time.sleep(0.5)
        lost = WorkerLost if replaceable else StageFailed
        raise lost(stage, f"stage {stage} ({endpoints.control}) did not come back within {timeout:.0f}s")

    def keep_alive(self) -> None:
        """Beat to every worker (at most once a second) while the coordinator waits on something else."""
        self._beat()

    def pause(self, seconds: float) -> None:
        """Wait `seconds` while the workers keep hearing the beat; nothing else is watched (a recovery is under way)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._beat()
            time.sleep(min(left, 0.25))

    def request_all(self, command: str, meta: Optional[dict[str, Any]] = None, timeout: float = 60.0,
                    stall_timeout: Optional[float] = None) -> list[Message]:
        return [self.request(stage, command, meta, timeout, stall_timeout) for stage in range(self.stages)]

    def wait_for_workers(self, timeout: float) -> None:
        for stage in range(self.stages):
            try:
                self.request(stage, "ping", timeout=timeout)
            except PipelineError as error:
                if "did not answer" not in str(error):
                    raise
                hint = ("this coordinator uses CURVE keys: the worker needs --keys with a copy of the same key directory"
                        if self.authenticator is not None else
                        "if the worker runs with --keys, this coordinator needs --keys with a copy of the same directory")
                raise PipelineError(f"{error} ({hint})") from error

    # -- data ----------------------------------------------------------------------

    def send_parts(self, kind: Kind, batch: int, parts: Sequence[tuple[int, dict[str, np.ndarray]]],
                   meta: Optional[dict[str, Any]] = None) -> None:
        """Put each fed stage's part of a batch (or a sequence job's chunk) into its feed's outbox, and write what
        the stages take now."""
        for stage, arrays in parts:
            feed = self.feeds[stage]
            feed.put(Message(kind, self.job_id, batch, batch, -1, meta or {}, arrays))
            feed.write()

    def feed_over_bound(self) -> bool:
        """A stage has not taken what is due (the schedule then feeds nothing more)."""
        return any(feed.over_bound for feed in self.feeds)

    def receive(self, timeout: float) -> Optional[Message]:
        """The next result, or None after `timeout` seconds; heartbeats and error reports are handled on the way."""
        deadline = time.monotonic() + timeout
        while not self.results:
            remaining = deadline - time.monotonic()
            if self.inbox not in self._turn(max(0.0, min(remaining, 0.5))):
                self._check_heartbeats()  # judged only on an empty inbox: beats may wait there while we were busy
                if remaining <= 0:
                    return None
        return self.results.popleft()

    def receive_until_stalled(self, stall_seconds: float, lost: Callable[[], Exception]) -> Message:
        """The next result; `lost()` is raised once every stage has been idle `stall_seconds` without one (it cannot come)."""
        while (message := self.receive(1.0)) is None:
            if self.idle_for() > stall_seconds:
                raise lost()
        return message

    def _turn(self, timeout: float, awaited: Optional[zmq.Socket] = None) -> dict:
        """One turn of the loop: write the feed, watch the workers when due, poll, take in the inbox; the events."""
        self.link.write()
        now = time.monotonic()
        if now >= self.checks_due:
            self.checks_due = now + CHECK_SECONDS
            self._watch()
        if awaited is not None:
            self.poller.register(awaited, zmq.POLLIN)
        for feed in self.feeds:  # polling does not write, so the feeds that want to are the same after it
            if feed.wants_write:
                self.poller.register(feed.socket, zmq.POLLOUT)
        try:
            events = dict(poll_within(self.poller.poll, self.link.timeout(timeout)))
        finally:
            if awaited is not None:
                self.poller.unregister(awaited)
            for feed in self.feeds:
                if feed.wants_write:
                    self.poller.unregister(feed.socket)
        self.interrupts.check()
        if self.inbox in events:
            self._read_inbox()
        return events

    def _watch(self) -> None:
        """What a loop looks at now and then: the workers' processes and connections, the beat, the refusal log."""
        self.pool.check()
        self._beat()
        self._check_connections()
        self.refusals.summarise_due()

    def _read_monitors(self) -> None:
        now = time.monotonic()
        for stage, monitor in enumerate(self.monitors):
            while monitor.poll(0):
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_DISCONNECTED and self.disconnected_at[stage] is None:
                    level = logging.DEBUG if stage in self.stopping else logging.WARNING  # told to stop: it is expected
                    log.log(level, "stage %d (%s) lost its connection", stage, self.endpoints[stage].control)
                    self.disconnected_at[stage] = now
                    self.drops[stage] += 1
                elif event == zmq.EVENT_CONNECTED and self.disconnected_at[stage] is not None:
                    log.warning("stage %d (%s) is connected again", stage, self.endpoints[stage].control)
                    self.disconnected_at[stage] = None

    def gone(self, grace: float = DISCONNECT_GRACE) -> Optional[int]:
        """The stage whose connection dropped first and has stayed down `grace` seconds, if any."""
        self._read_monitors()
        now = time.monotonic()
        down = [(at, stage) for stage, at in enumerate(self.disconnected_at) if at is not None and now - at >= grace]
        return min(down)[1] if down else None

    def _read_inbox(self) -> None:
        """Everything the inbox holds now: results are kept for `receive`, beats and reports taken in here."""
        while True:
            try:
                frames = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = decode(frames, self.limits)
            except ProtocolError as error:
                self.refusals.refuse("malformed on the inbox", str(error))
                continue
            self._take(message)

    def _take(self, message: Message) -> None:
        if message.job != self.job_id or not 0 <= message.sender < self.stages:
            self.refusals.refuse("not this job's", f"a message from job {message.job!r:.60} stage {message.sender}")
            return
        self.last_seen[message.sender] = time.monotonic()
        if message.kind is Kind.HEARTBEAT:
            self.watched[message.sender] = True
            self._take_status(message.sender, message.meta)
        elif message.kind is Kind.ERROR:
            self._take_error_report(message.sender, message.meta)
        else:
            self.activity_at = time.monotonic()
            self.results.append(message)

    def _take_status(self, stage: int, status: dict[str, Any]) -> None:
        previous = self.status[stage]
        if status.get("handled") != previous.get("handled"):
            self.activity_at = time.monotonic()
        refused = int(status.get("refused", 0)) - int(previous.get("refused", 0))
        if refused > 0:
            self.refusals.refuse(f"by stage {stage}", "details in that worker's log", refused)
        self.status[stage] = status
        if status.get("failure"):
            raise StageFailed(stage, f"{self.where(stage)} failed: {status['failure']} (traceback in that worker's log)")

    def _take_error_report(self, stage: int, report: dict[str, Any]) -> None:
        if report.get("fatal"):
            raise StageFailed(stage, f"{self.where(stage)} ({report.get('stage_kind')}) failed: {report.get('error')} "
                                     "(traceback in that worker's log)")
        if "lost_batch" in report:
            sender = report.get("from_stage", -1)
            source = f"stage {sender}" if isinstance(sender, int) and sender >= 0 else "the coordinator"
            raise StageFailed(stage, f"{self.where(stage)} refused batch {report['lost_batch']} from {source} and so lost it: "
                                     f"{report.get('error')}")
        self.refusals.refuse(f"by stage {stage}", str(report.get("error")))

    def where(self, stage: int) -> str:
        """A stage as messages name it: its index, and its name in a graph."""
        return stage_label(stage, self.names[stage] if self.names else "")

    @property
    def refused_by_stage(self) -> list[int]:
        """Messages each stage has refused, as its latest heartbeat counted them."""
        return [int(status.get("refused", 0)) for status in self.status]

    def idle_for(self) -> float:
        """Seconds since a result arrived or any stage took in a message, if every stage is idle; else 0.

        A message held by an emulated link is on its way, not lost: while the feed or any stage holds one,
        nothing is idle."""
        if self.link.held() or any(float(status.get("busy_for", 0.0)) > 2.0 or status.get("held") for status in self.status):
            return 0.0
        return time.monotonic() - self.activity_at

    def forget_silence(self) -> None:
        """Start the liveness clocks afresh (at the start, and after workers were restarted)."""
        now = time.monotonic()
        self.last_seen = [now] * self.stages
        self.watched = [False] * self.stages  # judged by their silence: serving this job (configured, or heard beating)
        self.status: list[dict[str, Any]] = [{} for _ in range(self.stages)]
        self.activity_at = now

    def _beat(self) -> None:
        """Tell every worker the coordinator lives; a worker that stops hearing this ends its job."""
        now = time.monotonic()
        if now - self.last_beat < 1.0:
            return
        self.last_beat = now
        beat = Message(Kind.HEARTBEAT, self.job_id)
        for socket in self.controls:
            try:
                send_message(socket, beat, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    def _check_connections(self) -> None:
        stage = self.gone()
        if stage is not None and stage not in self.excused:
            down = time.monotonic() - (self.disconnected_at[stage] or 0.0)
            raise WorkerLost(stage, f"stage {stage} ({self.endpoints[stage].control}) lost its connection {down:.0f}s ago "
                                     "and has not come back: its worker died or its host is unreachable")

    def _check_heartbeats(self) -> None:
        """A silent stage is named, the one silent longest first: when one dies, its neighbours may go quiet after it.
        A worker that serves no job of ours yet (starting, or just replaced) sends no beats, so it is not judged."""
        now = time.monotonic()
        watched = [index for index in range(self.stages) if self.watched[index] and index not in self.excused]
        if not watched:
            return
        stage = min(watched, key=lambda index: self.last_seen[index])
        silent = now - self.last_seen[stage]
        if silent > self.heartbeat_timeout:
            raise WorkerLost(stage, f"stage {stage} ({self.endpoints[stage].control}) sent nothing for {silent:.0f}s: "
                                     "died or unreachable")
        for stage, status in enumerate(self.status):
            busy = float(status.get("busy_for", 0.0))
            if busy > self.hang_timeout:
                raise StageFailed(stage, f"stage {stage} ({self.endpoints[stage].control}) has been stuck in one step for {busy:.0f}s")


def _refusal(stage: int, command: str, reply: dict[str, Any]) -> DniError:
    """What a refused request means: a worker that cannot build its stage refuses the job itself, as the local check
    would have; one that cannot write a file says which and why."""
    if command == "configure":
        return ConfigError(f"stage {stage} refused {command!r}: {reply.get('error')}")
    if reply.get("write_failed"):
        return PipelineError(f"stage {stage} could not write its {command}: {reply['write_failed']}")
    return PipelineError(f"stage {stage} refused {command!r}: {reply.get('error')}")
