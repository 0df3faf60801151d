"""The `dni` command: the coordinator's commands (run, worker, keys, plot) and the benchmarks (bench).

The command line is assembled here, above the layers it calls, so that no layer imports another upward: the
coordinator's commands live in `dni.coordinator.cli`, the benchmarks' in `dni.bench.cli`.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from dni.bench import cli as bench_cli
from dni.coordinator import cli as coordinator_cli
from dni.errors import DniError

__all__ = ["COMMANDS", "build_parser", "main", "package_version"]

COMMANDS = {**coordinator_cli.COMMANDS, "bench": bench_cli.run}


def package_version() -> str:
    """dni's version: the installed package's metadata, else the pyproject.toml beside the packages (a checkout)."""
    try:
        return metadata.version("dni")
    except metadata.PackageNotFoundError:
        try:
            return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dni", description="Decoupled Neural Interfaces: one worker process per layer.")
    parser.add_argument("--version", action="version", version=f"dni {package_version()}", help="print dni's version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    coordinator_cli.add_commands(commands)
    bench_cli.add_command(commands)
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
