"""Timeouts and grace periods follow a monotonic clock: a wall-clock jump (NTP step, a wrong
date set by hand, a VM resumed) neither fires them early nor holds them back (issue 6)."""

from __future__ import annotations

import ast
import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, FakeHandle, make_daemon, step

import supervisor
from supervisor.daemon import Daemon
from supervisor.executors.base import Adopted, ProcessRecord
from supervisor.executors.local.identity import current_boot_id, parse_stat_line

TIMEOUT = 100.0
GRACE = 10.0
PACKAGE = Path(supervisor.__file__).parent
# Packages whose deadlines must never read the wall clock: the loop, every executor, the readers.
DEADLINE_PACKAGES = ("daemon", "executors", "progress")


@pytest.fixture
def sim() -> Iterator[int]:
    """A process just started, standing in for the run's simulation (its start time is real)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def process_record(pid: int) -> ProcessRecord:
    """The identity of a live process, as the daemon stores it."""
    with open(f"/proc/{pid}/stat") as fh:
        pid, ticks = parse_stat_line(fh.read())
    return ProcessRecord(
        pid=pid,
        pgid=pid,
        start_ticks=ticks,
        boot_id=current_boot_id(),
        keeper_pid=pid,
        keeper_start_ticks=ticks,
    )


Rig = tuple[Daemon, FakeExecutor, FakeClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_daemon(tmp_path, timeout=TIMEOUT, grace=GRACE, limit=1)


def start_run(rig: Rig, sim: int, *, adopted: bool) -> tuple[str, FakeHandle]:
    """A RUNNING row tracked by the daemon, freshly launched or adopted after a restart."""
    daemon, executor, _ = rig
    record = daemon.store.submit("sim", "{}")
    if adopted:
        proc = process_record(sim)
        daemon.store.mark_running(
            record.id, proc, run_dir=str(daemon.settings.runs_dir / record.id)
        )
        handle = FakeHandle(proc)
        executor.found[record.id] = Adopted(handle)
        daemon.recover()
    else:
        step(daemon)
        executor.launches[record.id].report()
        step(daemon)
        handle = executor.launches[record.id].handle
    assert record.id in daemon.runs
    return record.id, handle


@pytest.mark.parametrize("adopted", [False, True])
@pytest.mark.parametrize("jump", [timedelta(days=1), timedelta(days=-1)])
def test_wall_clock_jump_neither_fires_nor_delays_the_timeout(
    rig: Rig, sim: int, adopted: bool, jump: timedelta
) -> None:
    daemon, _, clock = rig
    if adopted:
        clock.wall += jump  # the clock jumped while the daemon was away, before it re-adopted
    run_id, handle = start_run(rig, sim, adopted=adopted)
    start = clock.now
    clock.wall += jump
    step(daemon)
    assert handle.signals == [], "a wall-clock jump fired the timeout"
    clock.now = start + TIMEOUT - 1
    step(daemon)
    assert handle.signals == []
    clock.now = start + TIMEOUT + 1
    step(daemon)
    assert handle.signals == [signal.SIGTERM], "the timeout must fire on the monotonic clock"
    assert daemon.store.get(run_id).timed_out_at is not None
    # The grace period, too, is monotonic: a jump back does not hold the SIGKILL back.
    clock.wall -= 2 * jump
    clock.now = start + TIMEOUT + 1 + GRACE - 1
    step(daemon)
    assert handle.signals == [signal.SIGTERM]
    clock.now = start + TIMEOUT + 1 + GRACE + 1
    step(daemon)
    assert handle.signals == [signal.SIGTERM, signal.SIGKILL]


def _wall_clock_reads(path: Path) -> list[str]:
    """time.time(), time.time_ns(), datetime.now()/utcnow() calls in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in ("time.time", "time.time_ns", "datetime.now", "datetime.utcnow"):
                found.append(f"{path.name}:{node.lineno}: {name}")
    return found


def test_deadline_code_never_reads_the_wall_clock() -> None:
    """Intervals, timeouts and grace periods use time.monotonic; the wall clock (utcnow) is
    only for timestamps stored in rows."""
    found: list[str] = []
    paths: list[Path] = []
    for package in DEADLINE_PACKAGES:
        paths += sorted((PACKAGE / package).rglob("*.py"))
    for path in paths:
        found += _wall_clock_reads(path)
    assert len(paths) > len(DEADLINE_PACKAGES)  # the packages were found
    assert found == []
