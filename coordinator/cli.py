"""The coordinator's commands of `dni` (`dni.cli`): run a job, serve a worker, make keys, plot runs."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dni.coordinator.train.interrupts import INTERRUPTS
from dni.coordinator.jobs.job import SETTINGS, SHORTCUTS, Job, load_job, with_addresses
from dni.coordinator.results.plots import check_runs, default_output, plot_runs
from dni.coordinator.train.progress import Progress, end_bar_line_before_logs
from dni.errors import ConfigError, DniError, RunInterrupted
from dni.settings import Setting
from dni.workers import cli as worker_cli

if TYPE_CHECKING:
    from dni.coordinator.results.folder import RunFolder

__all__ = ["COMMANDS", "OVERRIDES", "add_commands", "add_run_arguments", "job_from_args", "report_run"]

OVERRIDES = {row.flag_name: row for row in SETTINGS if row.flag}  # flag -> the job setting it overrides


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


def add_commands(commands: Any) -> None:
    """The coordinator's commands on the `dni` command line (`dni.cli`): run, worker, keys, plot."""
    run = commands.add_parser("run", help="train a job", description=(
        "Train a job: a shortcut (" + ", ".join(SHORTCUTS) + ") or a TOML job file. Flags override the file. "
        "Without --workers, one local worker process per stage is started."))
    add_run_arguments(run)

    worker = commands.add_parser("worker", help="serve one pipeline stage", description="Serve one pipeline stage; the coordinator configures it.")
    worker_cli.add_arguments(worker)

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
    from dni.coordinator.train.run import resume_job, run_job

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


COMMANDS = {"run": _run, "worker": worker_cli.run, "keys": _keys, "plot": _plot}
