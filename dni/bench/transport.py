"""`dni bench transport`: the cost of one hop, for the job's own message sizes.

An echo process decodes each message and sends it back, as a worker would; the
round-trip time is therefore two hops of serialise, send, receive and validate.
With `--link-delay-ms D` it then measures each hop's one-way delivery latency
through the emulated link, with the delay and without (`latency`).
"""
from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from dni.bench.latency import delivery_row, one_way_latencies
from dni.coordinator.jobs.job import load_job
from dni.coordinator.jobs.shapes import check_stages
from dni.protocol import free_port_block
from dni.protocol import Kind, Message, receive_message, send_message
from dni.protocol.linkdelay import describe
from dni.protocol.transport import ZERO_COPY_THRESHOLD
from dni.spec import check_link_delay

__all__ = ["DATASET_SHAPES", "round_trips", "run_transport"]

DATASET_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _echo(address: str, copy: bool, count: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PAIR)
    socket.bind(address)
    for _ in range(count):
        send_message(socket, receive_message(socket), copy=copy)
    socket.close(linger=1000)
    context.term()


def round_trips(address: str, message: Message, copy: bool, count: int) -> list[float]:
    server = multiprocessing.get_context("fork").Process(target=_echo, args=(address, copy, count + 10))
    server.start()
    context = zmq.Context()
    socket = context.socket(zmq.PAIR)
    socket.connect(address)
    times = []
    try:
        for index in range(count + 10):
            start = time.perf_counter()
            send_message(socket, message, copy=copy)
            receive_message(socket)
            if index >= 10:  # warm-up
                times.append(time.perf_counter() - start)
    finally:
        socket.close(linger=0)
        context.term()
        server.join(10)
    return times


def run_transport(args) -> dict[str, Any]:
    delay_ms = check_link_delay(args.link_delay_ms)
    job = load_job(args.job, {"data_root": args.data_root})
    shapes = check_stages(job, DATASET_SHAPES[job.dataset], 10)
    activation = max(shapes[:-1], key=lambda shape: int(np.prod(shape)))
    batch = job.batch_size
    messages = {
        "activation": Message(Kind.FORWARD, "bench", 1, 1, 0, {}, {
            "x": np.random.rand(batch, *activation).astype(np.float32), "labels": np.zeros(batch, np.int64)}),
        "gradient": Message(Kind.BACKWARD, "bench", 1, 1, 1, {}, {"target": np.random.rand(batch, *activation).astype(np.float32)}),
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dni-bench-") as sockets:
        for transport in ("ipc", "tcp"):
            for copy in (True, False):
                for name, message in messages.items():
                    address = f"ipc://{sockets}/echo" if transport == "ipc" else f"tcp://127.0.0.1:{free_port_block(1)}"
                    times = round_trips(address, message, copy, args.count)
                    size = sum(array.nbytes for array in message.tensors.values())
                    median = statistics.median(times)
                    rows.append({"transport": transport, "zero_copy": not copy, "message": name, "bytes": size,
                                 "rtt_median_ms": 1000 * median, "rtt_p90_ms": 1000 * sorted(times)[int(0.9 * len(times))],
                                 "hop_ms": 500 * median, "throughput_mb_s": 2 * size / median / 1e6})
        delivery = [delivery_row(name, one_way_latencies(f"ipc://{sockets}/delayed", message, delay_ms / 1000, args.count),
                                 one_way_latencies(f"ipc://{sockets}/direct", message, 0.0, args.count), delay_ms)
                    for name, message in messages.items()] if delay_ms else []
    best = min(rows, key=lambda row: row["rtt_median_ms"] if row["message"] == "activation" else float("inf"))
    report = {"job": job.name, "batch_size": batch, "activation_shape": list(activation), "rows": rows,
              "fastest": {"transport": best["transport"], "zero_copy": best["zero_copy"]}, "link_delay": delivery}
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench-transport.json").write_text(json.dumps(report, indent=2))
    print(f"one hop for {job.name}: batch {batch} x {activation} float32 ({rows[0]['bytes'] / 1e6:.2f} MB), echo round trips x{args.count}")
    print(f"{'transport':<9} {'zero-copy':<9} {'message':<10} {'RTT median ms':>13} {'p90 ms':>8} {'per hop ms':>10} {'MB/s':>8}")
    for row in rows:
        print(f"{row['transport']:<9} {str(row['zero_copy']):<9} {row['message']:<10} {row['rtt_median_ms']:>13.3f} "
              f"{row['rtt_p90_ms']:>8.3f} {row['hop_ms']:>10.3f} {row['throughput_mb_s']:>8.0f}")
    print(f"fastest for activations: {best['transport']}, zero-copy={best['zero_copy']} "
          f"(local runs use ipc; messages over {ZERO_COPY_THRESHOLD >> 10} KiB go zero-copy)")
    if delivery:
        _print_delivery(delivery, args.count)
    print(f"results: {folder / 'bench-transport.json'}")
    return report


def _print_delivery(rows: list[dict[str, Any]], count: int) -> None:
    print(f"\none-way delivery over ipc, {describe(rows[0]['delay_ms'])}: {count} messages each way, stamped when handed "
          "to the link, timed on arrival")
    print(f"{'message':<10} {'no delay ms':>11} {'delayed min':>11} {'median':>8} {'p90':>8} {'median - no delay':>17}")
    for row in rows:
        print(f"{row['message']:<10} {row['baseline_median_ms']:>11.3f} {row['one_way_min_ms']:>11.3f} {row['one_way_median_ms']:>8.3f} "
              f"{row['one_way_p90_ms']:>8.3f} {row['added_ms']:>17.3f}  (emulated delay {row['delay_ms']:g} ms)")
