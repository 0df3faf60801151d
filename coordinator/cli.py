"""The `dni` command: run a job, serve a worker, plot runs."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from dni.coordinator.interrupts import INTERRUPTS
from dni.coordinator.job import SETTINGS, SHORTCUTS, Job, load_job, with_addresses
from dni.coordinator.plots import check_runs, default_output, plot_runs
from dni.coordinator.progress import Progress, end_bar_line_before_logs
from dni.errors import ConfigError, DniError, RunInterrupted
from dni.settings import Setting
from dni.spec import MODE_NAMES
from dni.workers import cli as worker_cli

if TYPE_CHECKING:
    from dni.coordinator.results import RunFolder

__all__ = ["COMMANDS", "OVERRIDES", "add_run_arguments", "build_parser", "job_from_args", "main", "package_version", "report_run"]

OVERRIDES = {row.flag_name: row for row in SETTINGS if row.flag}  # flag -> the job setting it overrides


def package_version() -> str:
    """dni's version: the installed package's metadata, else the pyproject.toml beside the packages (a checkout)."""
    try:
        return metadata.version("dni")
    except metadata.PackageNotFoundError:
        try:
            return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dni run`; `python -m dni.launch` takes the same ones."""
    parser.add_argument("job", nargs="?", help="mnist, cifar10, copy, repeat-copy, chars, or a path to a job file "
                        "(see docs/jobs.md)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue a stopped run folder from its last checkpoint")
    for flag, row in OVERRIDES.items():
        _add_override(parser, flag, row)
    parser.add_argument("--workers", help="comma-separated addresses of running workers (tcp://host:port,...), one per stage")
    parser.add_argument("--bind", help="address of the coordinator's inbox (default: ipc for local workers, tcp://0.0.0.0:5550 for remote; "
                        "tcp://127.0.0.1:5550 with --insecure)")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--keys", metavar="DIR", help="CURVE key directory made by `dni keys DIR` (required for remote workers; "
                          "job file: keys = \"DIR\")")
    security.add_argument("--insecure", action="store_true", help="no encryption or authentication: allowed only when every "
                          "address is on loopback or ipc:// (job file: insecure = true)")
    parser.add_argument("--advertise", help="address workers use to reach the coordinator (default: derived from --bind)")
    parser.add_argument("--transport", choices=["ipc", "tcp"], default="ipc", help="how local workers talk (default ipc)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the coordinator's log detail (default INFO; local workers log WARNING and up)")


def _add_override(parser: argparse.ArgumentParser, flag: str, row: Setting) -> None:
    """A setting's flag; given, its value lands in args.<setting>, else None (the job file's stands). A switch
    flips the setting's default (--record-spans, --no-download)."""
    if row.kind is bool:
        parser.add_argument(flag, dest=row.name, action="store_const", const=not row.default, help=row.help)
    else:
        parser.add_argument(flag, dest=row.name, type=row.kind, choices=row.choices or None, help=row.help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dni", description="Decoupled Neural Interfaces: one worker process per layer.")
    parser.add_argument("--version", action="version", version=f"dni {package_version()}", help="print dni's version and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train a job", description=(
        "Train a job: a shortcut (" + ", ".join(SHORTCUTS) + ") or a TOML job file. Flags override the file. "
        "Without --workers, one local worker process per stage is started."))
    add_run_arguments(run)

    worker = commands.add_parser("worker", help="serve one pipeline stage", description="Serve one pipeline stage; the coordinator configures it.")
    worker_cli.add_arguments(worker)

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
    speedup.add_argument("--model", choices=["balanced-mlp"], help="stages of equal cost instead of a job file")
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

    keys = commands.add_parser("keys", help="create CURVE keys for encrypted, authenticated tcp:// sockets", description=(
        "Create a key directory: a server key pair (binding sockets), a client key pair (connecting sockets) and "
        "authorized/ (public keys allowed to connect). Copy it to every host; pass --keys DIR to dni worker and dni run."))
    keys.add_argument("directory", type=Path, help="new directory (refuses to overwrite existing keys)")

    plot = commands.add_parser("plot", help="draw the accuracy (or sequence curves) of several runs into one plot",
                               description=(
        "Draw the test accuracy per epoch of one or more runs into one PNG, one line per run, labelled with the run "
        "folder's name, mode and final accuracy; for sequence jobs (copy, repeat-copy, chars), their bits per step "
        "and curriculum length per batch. Prints the file written."))
    plot.add_argument("runs", nargs="+", type=Path, help="run folders (each made by dni run: with its metrics.jsonl, "
                      "or a finished sequence job's summary.json)")
    plot.add_argument("-o", "--output", type=Path, help="PNG file to write (default: plot-YYYYmmdd-HHMMSS.png in the "
                      "first run's parent folder, e.g. runs/)")
    plot.add_argument("--title", help="title of the plot (default: Test accuracy, or Sequence jobs)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run one subcommand; a DniError becomes its message and its exit code (2: bad input, 1: failed, 0: nothing to do)."""
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except DniError as error:
        print(f"dni {args.command}: {error}", file=sys.stderr)
        code = error.exit_code
    if code:
        sys.exit(code)


def _bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level="WARNING")
    logging.getLogger("dni.bench").setLevel(logging.INFO)  # a sweep's runs, one line each
    from dni.bench.linkdelay import run_link_delay
    from dni.bench.overhead import run_overhead
    from dni.bench.speedup import run_speedup
    from dni.bench.transport import run_transport

    if args.bench == "speedup" and not args.model and not args.iterations:
        args.iterations = 1000
    if args.bench == "speedup":
        (run_link_delay if args.link_delay_ms else run_speedup)(args)
    elif args.bench == "overhead":
        run_overhead(args)
    else:
        run_transport(args)
    return 0


def _plot(args: argparse.Namespace) -> int:
    check_runs(args.runs)
    print(plot_runs(args.runs, args.output or default_output(args.runs), args.title))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from dni.protocol.security import create_keys

    try:
        create_keys(args.directory)
    except OSError as error:
        raise ConfigError(f"cannot write keys to {args.directory}: {error}") from error
    print(f"keys in {args.directory}: copy this directory to every host over a secure channel and pass --keys "
          f"{args.directory} to `dni worker` and `dni run` (or keys = \"...\" in the job file); *.key_secret files are "
          "readable by you only")
    return 0


def _run(args: argparse.Namespace) -> int:
    from dni.coordinator.run import resume_job, run_job

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    end_bar_line_before_logs()
    INTERRUPTS.install()  # SIGINT and SIGTERM alike end training with a checkpoint

    def train():
        if args.resume:
            return resume_job(args.resume, bind=args.bind, advertise=args.advertise, transport=args.transport,
                              show_progress=not args.no_progress)
        job = job_from_args(args)
        if args.workers:
            job = with_addresses(job, [address.strip() for address in args.workers.split(",")])
        return run_job(job, args.bind, args.advertise, args.transport, not args.no_progress)

    return report_run(train)


def job_from_args(args: argparse.Namespace) -> Job:
    """The job named on the command line, with the flags of `add_run_arguments` applied on top."""
    if args.job is None and not args.text:
        raise ConfigError("name a job (mnist, cifar10, copy, repeat-copy, chars or a job file), --text FILE or --resume RUN")
    overrides = {row.name: _checked(row, flag, getattr(args, row.name)) for flag, row in OVERRIDES.items()}
    if args.keys or args.insecure:  # either flag overrides the job file's keys and insecure settings
        overrides.update(keys=args.keys or "", insecure=args.insecure)
    return load_job(args.job or "chars", overrides)


def _checked(row: Setting, flag: str, value: Any) -> Any:
    """A flag's value, checked here so that a bad one is refused naming the flag, not the job file it overrides."""
    if value is not None:
        row.read(value, flag)
    return value


def report_run(train: Callable[[], tuple[RunFolder, dict[str, Any]]], again: str = "dni run --resume {folder}") -> int:
    """Run `train` and say how it went as `dni run` does: the result and the folder, or the error; the exit code.

    An interrupt is the user's own doing, not an error: it is logged as a warning, and what they need next is
    printed: the step --resume starts from, the folder, and `again`, the command that continues the run (`{folder}`
    in it becomes the folder, quoted for the shell).
    """
    log = logging.getLogger("dni")
    try:
        folder, summary = train()
    except DniError as error:
        if error.exit_code == 0:
            print(error, file=sys.stderr)
        else:
            log.error("%s%s", "run failed: " if error.exit_code == 1 else "", error)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        log.warning("interrupted; workers stopped")
        if isinstance(interrupt, RunInterrupted):
            Progress.end_open_line()
            print(f"stopped at {interrupt.unit} {interrupt.resume_from}; results in {interrupt.folder}; "
                  f"continue with: {again.format(folder=shlex.quote(str(interrupt.folder)))}")
        return 130
    except OSError as error:  # one the coordinator did not expect (a file it reads, a socket folder): no traceback
        where = f": {error.filename}" if error.filename else ""
        log.error("run failed: %s%s", (error.strerror or str(error)).lower(), where)
        return 1
    shown = ("test_accuracy", "max_length_solved", "test_bits_per_char", "wall_seconds", "samples_per_second", "link")
    print(json.dumps({key: summary[key] for key in shown if key in summary}))
    print(f"results: {folder.path}")
    return 0


COMMANDS = {"run": _run, "worker": worker_cli.run, "bench": _bench, "keys": _keys, "plot": _plot}
