"""`dni bench`: the benchmarks on the `dni` command line (`dni.cli`); each imported only when it runs."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from dni.spec import MODE_NAMES

__all__ = ["add_command", "run"]


def add_command(commands: Any) -> None:
    """`dni bench speedup|transport|overhead` and their flags."""
    bench = commands.add_parser("bench", help="measure update-locking speedups and transport costs", description=(
        "Measure what update-unlocking buys (speedup), what one message hop costs (transport) and what dni's own machinery "
        "costs per step (overhead); each prints a table "
        "and writes JSON (and plots) under --results."))
    benches = bench.add_subparsers(dest="bench", required=True)
    speedup = benches.add_parser("speedup", help="locked backprop vs unlocked DNI on the same workers, plus single-process baselines",
                                 description=(
        "Run the same model, data and seed as locked backprop and as unlocked DNI through the same workers, plus "
        "single-process and torch.distributed.pipelining baselines; report steady throughput, speedup, time to each "
        "target accuracy and every worker's time by activity. Writes bench-speedup-<time>/ under --results (bench.json, plots)."))
    speedup.add_argument("--job", default="mnist", help="shortcut (mnist, cifar10) or job file (default mnist; ignored with --model)")
    speedup.add_argument("--model", choices=["balanced-mlp", "balanced-towers"],
                         help="stages of equal cost instead of a job file; balanced-towers: two towers side by side (a "
                              "graph) against the same modules as a chain, locked, and the graph in sg (--rounds)")
    speedup.add_argument("--rounds", type=int, default=3, help="with --model balanced-towers: rounds of the three runs (default 3)")
    speedup.add_argument("--stages", default="2,4,8", help="with --model: stage counts to compare (default 2,4,8)")
    speedup.add_argument("--emulate", choices=["auto", "always", "never"], default="auto",
                         help="emulated device time (sleep) per stage: auto = when stages outnumber cores")
    speedup.add_argument("--modes", default="backprop,sg,cdni", help="pipeline modes; backprop is the locked reference (default backprop,sg,cdni)")
    speedup.add_argument("--iterations", type=int, default=0, help="training steps per run (default: 1000 for a job, 200 for --model)")
    speedup.add_argument("--targets", default="0.95,0.97", help="test accuracies to time (default 0.95,0.97)")
    speedup.add_argument("--data-root", help="dataset folder (else $DNI_DATA_ROOT, else ./data)")
    speedup.add_argument("--no-verify-data", action="store_true", help="skip dataset checksums (for rebuilt local copies)")
    speedup.add_argument("--no-baselines", action="store_true", help="skip the single-process and torch pipelining baselines")
    speedup.add_argument("--torch-schedules", default="gpipe,1f1b",
                         help="torch.distributed.pipelining schedules to run as baselines (gpipe, 1f1b; empty: none)")
    speedup.add_argument("--microbatches", type=int, default=4, help="micro-batches per batch for the torch schedules (default 4)")
    speedup.add_argument("--results", default="runs", help="parent folder of the bench folder (default ./runs)")
    delay = speedup.add_argument_group("link-delay sweep", "with --link-delay-ms: every mode at every delay on one pool of "
                                       "workers, one table (link-delay.json) and one plot (link-delay.png); no baselines")
    delay.add_argument("--link-delay-ms", metavar="LIST", help="emulated delays per hop to sweep, e.g. 0,1,5,20,50 (every data "
                       "message is held that long in its sender's queue)")
    delay.add_argument("--time-cap", type=int, default=120, help="seconds: the most one run of the sweep trains (default 120); "
                       "a run also stops once it reaches the highest --targets accuracy")
    delay.add_argument("--budget", type=float, default=0.0, help="seconds for the whole sweep, shared among the runs still to "
                       "go, so a run that ends early leaves its time to the later ones (default 0: --time-cap only)")
    delay.add_argument("--project-backprop", type=int, default=0, metavar="SECONDS", help="train locked backprop to the target "
                       "at the first delay only; at the others train it SECONDS for its steady rate and project its time "
                       "to target as steps to target x batch size / rate, marked projected (default 0: measure each)")
    delay.add_argument("--eval-every", type=int, default=0, help="steps between test evaluations: the resolution of the time "
                       "to target (default: the job's; a tenth of --iterations for --model)")
    transport = benches.add_parser("transport", help="round-trip time of one activation and one gradient message", description=(
        "Echo the job's largest activation and its gradient between two processes over ipc and tcp, copied and "
        "zero-copy, and report round-trip times and throughput; writes bench-transport.json."))
    transport.add_argument("--job", default="mnist", help="shortcut (mnist, cifar10) or job file whose message sizes to time (default mnist)")
    transport.add_argument("--count", type=int, default=200, help="round trips per setting (default 200)")
    transport.add_argument("--data-root", help="dataset folder (not read: the message sizes come from the job's stage shapes)")
    transport.add_argument("--results", default="runs", help="where bench-transport.json goes (default ./runs)")
    transport.add_argument("--link-delay-ms", type=float, default=0.0, metavar="D", help="also time each hop one way over ipc "
                           "through an emulated link delay of D ms, against none")

    overhead = benches.add_parser("overhead", help="dni's own cost per step: the pipeline against one process doing the same "
                                  "arithmetic", description=(
        "Run the reference topology 784-W-W-10 (Linear+BN+ReLU, synthesizers of two S-unit layers) as three workers and "
        "as a single-process loop of the same StageCompute steps, runs alternating; report steps/s of both and their ratio "
        "per mode, each worker's microseconds per step by activity and per message, and with --profile the hottest "
        "functions under cProfile. Writes bench-overhead-W-S-<time>/ under --results (overhead.json, overhead.png)."))
    overhead.add_argument("--width", type=int, default=16, help="hidden stage width W (default 16; the reference is 256)")
    overhead.add_argument("--synthesizer-width", type=int, default=16, help="synthesizer layer width S (default 16; the "
                          "reference is 1024)")
    overhead.add_argument("--modes", default=",".join(MODE_NAMES), help=f"modes to measure (default {','.join(MODE_NAMES)})")
    overhead.add_argument("--steps", type=int, default=2000, help="training steps per run (default 2000)")
    overhead.add_argument("--repeats", type=int, default=3, help="alternating runs of each side per mode; medians are "
                          "reported (default 3)")
    overhead.add_argument("--window", type=int, default=4, help="the pipeline's window (default 4, the job files')")
    overhead.add_argument("--single-threads", type=int, default=1, help="torch threads of the single-process loop "
                          "(default 1; workers always get 1 each)")
    overhead.add_argument("--profile", action="store_true", help="one more run per mode with every worker and the "
                          "coordinator under cProfile")
    overhead.add_argument("--data-root", help="dataset folder (else $DNI_DATA_ROOT, else ./data)")
    overhead.add_argument("--no-verify-data", action="store_true", help="skip dataset checksums (for rebuilt local copies)")
    overhead.add_argument("--results", default="runs", help="parent folder of the bench folder (default ./runs)")


def run(args: argparse.Namespace) -> int:
    """`dni bench ...`: one benchmark, its table printed and its results written under --results."""
    logging.basicConfig(level="WARNING")
    logging.getLogger("dni.bench").setLevel(logging.INFO)  # a sweep's runs, one line each
    from dni.bench.linkdelay import run_link_delay
    from dni.bench.overhead import run_overhead
    from dni.bench.graph_speedup import run_towers
    from dni.bench.speedup import run_speedup
    from dni.bench.transport import run_transport

    if args.bench == "speedup" and not args.model and not args.iterations:
        args.iterations = 1000
    if args.bench == "speedup" and args.model == "balanced-towers":
        run_towers(args)
    elif args.bench == "speedup":
        (run_link_delay if args.link_delay_ms else run_speedup)(args)
    elif args.bench == "overhead":
        run_overhead(args)
    else:
        run_transport(args)
    return 0
