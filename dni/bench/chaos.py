"""Faults on a live run from a seeded plan: workers killed, frozen for good, killed again while they are being
replaced, frozen in the middle of a checkpoint; and the coordinator itself killed and resumed.

The chaos benchmark (benchmarks/chaos/) and its CI-sized test (tests/e2e/test_chaos.py) share this, so that
both make the same faults the same way. A plan is a pure function of its seed: a run that went wrong can be
replayed fault for fault. Every fault is recorded with its wall time, and the coordinator's log says when it
noticed each one (`notices`, `unnoticed`).

A fault waits until the coordinator has answered the one before it (a replacement worker process started),
then its own delay: faults never pile up unnoticed, however long noticing takes (a killed worker is seen at
once, a frozen one only after the heartbeat timeout).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Callable, Mapping, Optional, Sequence, TypeVar

from dni.lifetime import alive, children, die_with_parent

__all__ = ["KINDS", "Fault", "Hit", "Injector", "Outcome", "Segment", "coordinator_delays", "kill_and_resume", "notices",
           "plan", "run_folder", "run_with_faults", "unnoticed", "workers"]

log = logging.getLogger("dni.chaos")
T = TypeVar("T")

KINDS = ("kill", "stop", "kill_replacement", "stop_at_checkpoint")
SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "kill_replacement": signal.SIGKILL,
           "stop_at_checkpoint": signal.SIGSTOP}
AFTER_REPLACEMENT = 0.5  # seconds from a replacement worker's start to its kill: in the middle of the recovery
POLL = 0.1  # seconds between looks at the coordinator's processes
CHECKPOINT_POLL = 0.005  # a small model's checkpoint is under way for only tens of milliseconds
EXIT_GRACE = 5.0  # seconds a dead coordinator's workers get to die with it
NOTICE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ WARNING .*replacing its worker", re.MULTILINE)
LOG_SLACK = 0.001  # the log's times are cut to the millisecond
STAGE = re.compile(r"stage(\d+)")  # in a local worker's command line: its address or ready file


@dataclass(frozen=True)
class Fault:
    """A planned fault: its kind, the seconds it waits after the previous fault was answered, and which worker
    (a share of the candidates in stage order, so that a seed picks the same stage every time)."""
    kind: str
    delay: float
    pick: float


@dataclass(frozen=True)
class Hit:
    """A fault as made: its kind, the worker process it hit, and when (time.time())."""
    kind: str
    pid: int
    at: float


def plan(seed: int, counts: Mapping[str, int], low: float, high: float) -> list[Fault]:
    """`counts[kind]` faults of each kind in a seeded order, each `low` to `high` seconds after the previous one
    was answered; a replacement is killed AFTER_REPLACEMENT seconds after it starts, so never first."""
    if set(counts) - set(KINDS):
        raise ValueError(f"unknown fault kinds {sorted(set(counts) - set(KINDS))}; the kinds are {', '.join(KINDS)}")
    if not 0 <= low <= high:
        raise ValueError(f"the delays must run from low to high, both at least 0; got {low} to {high}")
    rng = random.Random(seed)
    kinds = [kind for kind in KINDS for _ in range(counts.get(kind, 0))]
    rng.shuffle(kinds)
    if kinds and kinds[0] == "kill_replacement":
        first = next((index for index, kind in enumerate(kinds) if kind != "kill_replacement"), None)
        if first is None:
            raise ValueError("a replacement to kill needs another fault before it")
        kinds[0], kinds[first] = kinds[first], kinds[0]
    return [Fault(kind, AFTER_REPLACEMENT if kind == "kill_replacement" else rng.uniform(low, high), rng.random())
            for kind in kinds]


def coordinator_delays(seed: int, count: int, low: float, high: float) -> list[float]:
    """Seconds each coordinator lives before it is killed: `count` of them, seeded, from `low` to `high`."""
    if not 0 <= low <= high:
        raise ValueError(f"the delays must run from low to high, both at least 0; got {low} to {high}")
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]


def notices(log_text: str) -> list[float]:
    """When the coordinator began replacing a lost worker, as its log (stderr) says: wall times, in order."""
    return [datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() for match in NOTICE.finditer(log_text)]


def unnoticed(faults: Sequence[float], noticed: Sequence[float]) -> list[Optional[float]]:
    """Seconds each fault (wall times, in order) went unnoticed: to the first notice after it that no earlier
    fault took; None for a fault never noticed. A notice before every remaining fault answers none of them."""
    times = sorted(noticed)
    late: list[Optional[float]] = []
    index = 0
    for at in faults:
        while index < len(times) and times[index] < at - LOG_SLACK:
            index += 1
        late.append(max(0.0, times[index] - at) if index < len(times) else None)
        index += 1
    return late


def workers(coordinator: int) -> dict[int, str]:
    """The coordinator's live worker processes, with their command lines."""
    return {pid: command for pid, command in children(coordinator).items() if "dni.workers" in command and alive(pid)}


def run_folder(results: Path) -> Optional[Path]:
    """The run folder a job made under its `results` folder (its single subfolder); None before it exists."""
    return next((path for path in sorted(results.glob("*")) if path.is_dir()), None) if results.is_dir() else None


class Injector:
    """Makes a plan's faults on the workers of a running coordinator from a thread of its own, and records them
    (`hits`). The first delay counts from the run's first checkpoint. It ends once the plan is done and the
    coordinator has exited, or when closed; then no worker it froze is left: one that did not die with the
    coordinator within EXIT_GRACE seconds is killed, and listed in `leftover`."""

    def __init__(self, coordinator: int, results: Path, faults: Sequence[Fault]) -> None:
        self.coordinator = coordinator
        self.results = results
        self.faults = list(faults)
        self.hits: list[Hit] = []
        self.seen: set[int] = set()  # every worker process seen
        self.frozen: dict[int, str] = {}  # pid -> command line of each worker it stopped
        self.leftover: list[int] = []
        self.run: Optional[Path] = None
        self._current: dict[int, str] = {}
        self._scanned = 0.0
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos", daemon=True)

    def __enter__(self) -> "Injector":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._quit.set()
        self._thread.join()

    def _main(self) -> None:
        try:
            self._make_faults()
            while not self._quit.wait(POLL) and alive(self.coordinator):
                self._scan()
        finally:
            self.leftover = _outlived(self.frozen, 0.0 if alive(self.coordinator) else EXIT_GRACE)

    def _make_faults(self) -> None:
        if not self._wait(self._checkpointed):
            return
        replacement: Optional[int] = None
        for fault in self.faults:
            if not self._wait(_after(fault.delay)):
                return
            if fault.kind == "kill_replacement":
                victim = replacement
            elif fault.kind == "stop_at_checkpoint":
                victim = self._wait(partial(self._saving, fault.pick), CHECKPOINT_POLL)
            else:
                victim = self._pick(self._candidates(force=True), fault.pick)
            if not victim:
                return
            known = set(self._scan(force=True))
            self._hit(fault.kind, victim)
            replacement = self._wait(partial(self._replacement, known))

    def _wait(self, condition: Callable[[], Optional[T]], poll: float = POLL) -> Optional[T]:
        """Poll `condition` until it gives a value; None if the coordinator exits or the injector is closed first."""
        while not self._quit.is_set() and alive(self.coordinator):
            self._scan()
            value = condition()
            if value:
                return value
            self._quit.wait(poll)
        return None

    def _scan(self, force: bool = False) -> dict[int, str]:
        """The coordinator's workers, looked up at most every POLL seconds (unless `force`)."""
        if force or time.monotonic() - self._scanned >= POLL:
            self._current = workers(self.coordinator)
            self.seen |= set(self._current)
            self._scanned = time.monotonic()
        return self._current

    def _checkpointed(self) -> bool:
        self.run = run_folder(self.results)
        return self.run is not None and (self.run / "checkpoints" / "coordinator.json").is_file()

    def _replacement(self, known: set[int]) -> Optional[int]:
        """A worker started since the last fault: the coordinator's answer to it."""
        return next((pid for pid in self._scan() if pid not in known), None)

    def _candidates(self, force: bool = False) -> list[tuple[int, int]]:
        """(stage, pid) of every worker not frozen, in stage order."""
        return sorted((_stage(command), pid) for pid, command in self._scan(force).items() if pid not in self.frozen)

    @staticmethod
    def _pick(candidates: list[tuple[int, int]], share: float) -> Optional[int]:
        return candidates[int(share * len(candidates))][1] if candidates else None

    def _saving(self, share: float) -> Optional[int]:
        """A worker the checkpoint under way still waits for (its stage file is not written yet); None if none is."""
        try:
            written = {path.name for path in (self.run / "checkpoints" / "next").iterdir()} if self.run else None
        except OSError:
            return None
        if written is None:
            return None
        return self._pick([(stage, pid) for stage, pid in self._candidates() if f"stage{stage}.pt" not in written], share)

    def _hit(self, kind: str, pid: int) -> None:
        command = self._current.get(pid) or _command(pid)
        try:
            os.kill(pid, SIGNALS[kind])
        except ProcessLookupError:
            log.warning("%s: worker pid %d had already exited", kind, pid)
            return
        self.hits.append(Hit(kind, pid, time.time()))
        if SIGNALS[kind] == signal.SIGSTOP:
            self.frozen[pid] = command
        log.info("fault %d: %s of the stage %d worker (pid %d)", len(self.hits), kind, _stage(command), pid)


@dataclass
class Outcome:
    """A run under worker faults: its exit code (None: it outlasted its timeout and was killed), the faults
    made, its log, every worker process seen, frozen workers that outlived it, wall seconds."""
    exit_code: Optional[int]
    hits: list[Hit]
    log: str
    workers: set[int]
    leftover: list[int]
    seconds: float


def run_with_faults(command: Sequence[str], results: Path, faults: Sequence[Fault], log_path: Path,
                    timeout: float) -> Outcome:
    """Run `command` (a `dni run` writing its run folder under `results`) with its output in `log_path`, and
    make `faults` on its workers; after `timeout` seconds it is killed."""
    started = time.monotonic()
    with log_path.open("w") as stream:
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent)
    with Injector(process.pid, results, faults) as injector:
        code = _exit_code(process, timeout)
    return Outcome(code, injector.hits, log_path.read_text(), injector.seen, injector.leftover, time.monotonic() - started)


@dataclass
class Segment:
    """One coordinator's share of a run: its process, when it started and was killed (None: it exited by
    itself, with `exit_code`, or outlasted the timeout), the checkpoint step it resumed from, whether its run
    had completed before the kill (which then disrupted nothing), its workers, and those of them that outlived
    it by EXIT_GRACE seconds (then killed)."""
    pid: int
    started: float
    resumed_from: Optional[int]
    killed_at: Optional[float] = None
    after_completion: bool = False
    exit_code: Optional[int] = None
    workers: set[int] = field(default_factory=set)
    orphans: list[int] = field(default_factory=list)


def kill_and_resume(command: Sequence[str], results: Path, delays: Sequence[float], log_path: Path,
                    timeout: float) -> list[Segment]:
    """Run `command` (a `dni run` writing its run folder under `results`), SIGKILL its coordinator `delays[0]`
    seconds after it started, resume with `dni run --resume`, kill that one `delays[1]` seconds after its start,
    and so on; after the last kill the run goes on until it exits, or `timeout` seconds after the first start
    have passed (then it is killed). A coordinator is killed only once its run folder holds its job: before,
    there is nothing to resume. (A kill that came after the run completed is followed by a `--resume` that
    says so and exits.)"""
    deadline = time.monotonic() + timeout
    segments: list[Segment] = []
    with log_path.open("w") as stream:
        for delay in [*delays, None]:
            run = run_folder(results)
            arguments = [sys.executable, "-m", "dni", "run", "--resume", str(run), "--no-progress"] if run else list(command)
            segments.append(_segment(arguments, results, delay, deadline, stream))
            if segments[-1].killed_at is None:
                break
    return segments


def _segment(arguments: list[str], results: Path, delay: Optional[float], deadline: float, stream: IO[str]) -> Segment:
    run = run_folder(results)
    process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                               preexec_fn=die_with_parent)
    segment = Segment(process.pid, time.time(), _checkpoint_step(run) if run else None)
    due = time.monotonic() + (delay if delay is not None else math.inf)
    commands: dict[int, str] = {}
    while process.poll() is None and time.monotonic() < deadline:
        commands.update(workers(process.pid))
        run = run_folder(results)
        if time.monotonic() >= due and run is not None and (run / "job.json").is_file():
            process.kill()
            segment.killed_at = time.time()
            log.info("killed the coordinator (pid %d) %.1f s after its start", process.pid, delay)
            break
        time.sleep(POLL)
    segment.exit_code = _exit_code(process, 10.0 if segment.killed_at else max(0.0, deadline - time.monotonic()))
    segment.after_completion = segment.killed_at is not None and _status(results) == "complete"
    segment.workers = set(commands)
    segment.orphans = _outlived(commands, EXIT_GRACE)
    return segment


def _exit_code(process: subprocess.Popen, timeout: float) -> Optional[int]:
    """The process's exit code once it exits; None if it outlasts `timeout` seconds, and then it is killed."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def _outlived(processes: Mapping[int, str], grace: float) -> list[int]:
    """Those of `processes` (pid -> command line) still there after up to `grace` seconds, now killed."""
    deadline = time.monotonic() + grace
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(POLL)
    left = [pid for pid, command in processes.items() if alive(pid) and _command(pid) == command]
    for pid in left:
        log.warning("killing pid %d, left behind by its coordinator", pid)
        os.kill(pid, signal.SIGKILL)
    return left


def _status(results: Path) -> Optional[str]:
    """The status in the run's summary.json: complete, failed, interrupted, killed; None without one."""
    run = run_folder(results)
    try:
        return json.loads((run / "summary.json").read_text()).get("status") if run else None
    except (OSError, ValueError):
        return None


def _checkpoint_step(run: Path) -> int:
    """The step of the run's last committed checkpoint (0: none yet)."""
    try:
        return int(json.loads((run / "checkpoints" / "coordinator.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def _after(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def _stage(command: str) -> int:
    match = STAGE.search(command)
    return int(match[1]) if match else -1


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
