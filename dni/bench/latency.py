"""`dni bench transport --link-delay-ms D`: one-way delivery latency through the emulated link, against none.

Both ends send as a worker does: the message goes into an `Outbox`,
stamped with the time it was handed over, and the sender's loop writes it
when due, polling no longer than until then. The receiver subtracts the stamp
from its arrival time, so each hop is measured on its own, not as half a
round trip; both processes read the same CLOCK_MONOTONIC, being on one host.
The same code with no delay gives the baseline, so the report can show that
a hop takes D + the baseline, and how much the sender's loop adds.
"""
from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

import zmq

from dni.protocol import Message, Outbox, receive_message
from dni.protocol.linkdelay import describe, poll_within

__all__ = ["WARM_UP", "delivery_row", "one_way_latencies"]

WARM_UP = 10  # exchanges not counted
REPLY_SECONDS = 10.0  # an echo that does not answer this long has died


def _hand_over(link: Outbox, message: Message) -> None:
    message.meta["sent_at"] = time.monotonic()
    link.put(message)


def _echo(address: str, delay: float, count: int) -> None:
    """The far end: each message comes back through its own delayed link, carrying how long it took to arrive."""
    context = zmq.Context()
    socket = context.socket(zmq.PAIR)
    socket.bind(address)
    link, received = Outbox(socket, delay), 0
    while received < count or len(link):
        link.write()
        if poll_within(socket.poll, _timeout(link)):
            message = receive_message(socket)
            message.meta["forward"] = time.monotonic() - message.meta["sent_at"]
            _hand_over(link, message)
            received += 1
    socket.close(linger=1000)
    context.term()


def one_way_latencies(address: str, message: Message, delay: float, count: int) -> list[float]:
    """Seconds each of `count` messages took from being handed to the link to arriving, both ways."""
    server = multiprocessing.get_context("fork").Process(target=_echo, args=(address, delay, count + WARM_UP))
    server.start()
    context = zmq.Context()
    socket = context.socket(zmq.PAIR)
    socket.connect(address)
    link, times = Outbox(socket, delay), []
    try:
        for index in range(count + WARM_UP):
            _hand_over(link, Message(message.kind, message.job, index, index, 0, {}, message.tensors))
            deadline = time.monotonic() + REPLY_SECONDS
            link.write()
            while not poll_within(socket.poll, _timeout(link)):
                link.write()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the echo at {address} did not answer within {REPLY_SECONDS:.0f}s")
            reply = receive_message(socket)
            if index >= WARM_UP:
                times += [reply.meta["forward"], time.monotonic() - reply.meta["sent_at"]]
    finally:
        socket.close(linger=0)
        context.term()
        server.join(10)
    return times


def _timeout(link: Outbox) -> float:
    due = link.next_due()
    return 1.0 if due is None else min(1.0, max(0.0, due - time.monotonic()))


def delivery_row(name: str, delayed: list[float], baseline: list[float], delay_ms: float) -> dict[str, Any]:
    """One message's one-way latencies with the delay and without, in milliseconds."""
    median, base = 1000 * statistics.median(delayed), 1000 * statistics.median(baseline)
    return {"message": name, "delay_ms": delay_ms, "link": describe(delay_ms), "hops": len(delayed),
            "one_way_min_ms": 1000 * min(delayed), "one_way_median_ms": median,
            "one_way_p90_ms": 1000 * sorted(delayed)[int(0.9 * len(delayed))], "baseline_median_ms": base,
            "added_ms": median - base}
