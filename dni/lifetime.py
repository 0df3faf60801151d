"""A process's life among its relatives: dying with the parent, exiting fast, finding children, owning folders.

Local workers and torchrun's coordinator must not outlive the process that started
them, even one killed by SIGKILL; a process done with torch exits without the
interpreter's teardown, which takes a second or more that a restart waits for.
A folder a process works in (a run's, its workers' sockets') names its owner, so
the next run can tell one left behind by a process that was killed.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn, Optional

from dni.files import write_text_atomically

__all__ = ["OWNER", "abandoned_by", "alive", "children", "claim", "descendants", "die_with_parent", "exit_now", "held_by",
           "release"]

PR_SET_PDEATHSIG = 1
OWNER = "owner.json"  # in a folder a live process works in: its pid and host


def die_with_parent(parent: Optional[int] = None, leave_signals: bool = False) -> None:
    """Ask Linux to SIGKILL this process when its parent dies. With `leave_signals`, SIGINT and SIGTERM are
    ignored: the parent checkpoints and then stops its children itself. With `parent`, exit at once if that
    process already died before the request took hold."""
    if leave_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        sys.exit(1)


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown; the logs and what was printed are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parents() -> dict[int, int]:
    """Every process's parent, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
    return parents


def children(pid: int) -> dict[int, str]:
    """Processes whose parent is `pid`, with their command lines."""
    found = {}
    for child in (child for child, parent in _parents().items() if parent == pid):
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def descendants(roots: set[int]) -> set[int]:
    """Every process below `roots`, however deep."""
    parents = _parents()
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def claim(folder: Path) -> None:
    """Mark `folder` as this process's until `release`."""
    write_text_atomically(folder / OWNER, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def release(folder: Path) -> None:
    """Let go of `folder`; a folder that cannot be changed any more keeps its mark, which names a process then gone."""
    try:
        (folder / OWNER).unlink(missing_ok=True)
    except OSError as error:
        logging.getLogger("dni.lifetime").warning("could not release %s: %s", folder, error)


def abandoned_by(folder: Path) -> Optional[int]:
    """The pid of the process on this host that claimed `folder` and is gone; None if it lives, if it ran on another
    host (it cannot be seen from here), or if nobody claimed the folder."""
    owner = _owner(folder)
    return owner if owner is not None and not alive(owner) else None


def held_by(folder: Path) -> Optional[int]:
    """The pid of another live process on this host that claimed `folder`; None if there is none."""
    owner = _owner(folder)
    return owner if owner is not None and owner != os.getpid() and alive(owner) else None


def _owner(folder: Path) -> Optional[int]:
    """The pid that claimed `folder` on this host; None if it was claimed elsewhere, or not at all."""
    try:
        owner = json.loads((folder / OWNER).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if host == socket.gethostname() else None
