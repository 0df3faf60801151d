"""Command line of a worker process."""
from __future__ import annotations

import argparse
import logging
import signal
from typing import NoReturn, Optional, Sequence

from dni.lifetime import exit_now
from dni.protocol import ProtocolError
from dni.protocol.security import load_keys
from dni.workers.loop.worker import Worker

__all__ = ["add_arguments", "import_lazy_modules", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", required=True, help="base address: tcp://HOST:PORT (uses PORT..PORT+2; PORT 0: three free "
                        "ports, see --ready-file) or ipc://PATH")
    parser.add_argument("--once", action="store_true", help="exit after the first job stops (exit code 0 when stopped by "
                        "its coordinator, 3 when the coordinator fell silent)")
    parser.add_argument("--ready-file", metavar="PATH", help="once listening, write the three bound addresses there as JSON")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--keys", metavar="DIR", help="CURVE key directory made by `dni keys DIR` (required when --bind reaches beyond loopback)")
    security.add_argument("--insecure", action="store_true", help="no encryption or authentication; allowed only for loopback and ipc:// addresses")
    parser.add_argument("--child", action="store_true", help="started by a coordinator on this machine (dni run does so): "
                        "SIGINT and SIGTERM are left to it, since it checkpoints and then stops this worker, which dies with it")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log detail (default INFO)")


def run(args: argparse.Namespace) -> NoReturn:
    """Serve, then end the process at once with the worker's exit code.

    Its sockets are closed by then; skipping the interpreter's own shutdown
    (about a second with torch loaded, ten times that on a loaded machine) lets a
    worker whose coordinator died go away within moments of its SIGTERM.
    """
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if args.child:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    try:
        import_lazy_modules()
        worker = Worker(args.bind, args.once, keys=None if args.insecure or not args.keys else load_keys(args.keys),
                        ready_file=args.ready_file)
        if not args.child:
            _stop_on_signals(worker)
        code = worker.serve()
    except ProtocolError as error:
        logging.getLogger("dni.worker").error("%s", error)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    exit_now(code)


def _stop_on_signals(worker: Worker) -> None:
    """SIGINT or SIGTERM: the loop ends the job and the worker exits with code 0 (a second one exits at once)."""
    def stop(signum: int, frame: object) -> None:
        if not worker.running:
            raise SystemExit(0)
        logging.getLogger("dni.worker").warning("received %s: exiting", signal.Signals(signum).name)
        worker.stop(f"received {signal.Signals(signum).name}")

    signal.set_wakeup_fd(worker.wakeup.writer, warn_on_full_buffer=False)
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stop)


def import_lazy_modules() -> None:
    """Import now what a stage's first optimiser would import (torch._dynamo: seconds).

    Workers start side by side but are configured one after another, so a cost
    paid at start-up is paid once in parallel instead of once per stage in turn.
    """
    import torch._dynamo  # noqa: F401


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="dni worker", description="Serve one pipeline stage.")
    add_arguments(parser)
    run(parser.parse_args(argv))
