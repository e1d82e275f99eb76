"""Timeouts and grace periods follow a monotonic clock: a wall-clock jump (NTP step, a wrong
date set by hand, a VM resumed) neither fires them early nor holds them back (issue 6)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import supervisor
from supervisor import daemon as daemon_mod
from supervisor.daemon import Daemon
from supervisor.db import Store, utcnow
from supervisor.executors.base import ExitStatus, ProcessRecord
from supervisor.executors.local.identity import current_boot_id, parse_stat_line
from supervisor.notify import Notifier
from supervisor.settings import Settings, Template

TIMEOUT = 100.0
GRACE = 10.0
PACKAGE = Path(supervisor.__file__).parent
# Modules whose deadlines must never read the wall clock: the loop, every executor, the readers.
DEADLINE_MODULES = ("daemon.py", "logcap.py", "watch.py", "progress.py")
DEADLINE_PACKAGES = ("executors",)


class FakeClock:
    """Stands in for the `time` module inside supervisor.daemon: monotonic time we move."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeHandle:
    """A run handle whose process never ends by itself; records the signals sent."""

    def __init__(self, record: ProcessRecord) -> None:
        self.record = record
        self.signals: list[int] = []
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def exit_status(self) -> ExitStatus | None:
        return None

    def signal_group(self, sig: int) -> bool:
        self.signals.append(sig)
        return True

    def group_alive(self) -> bool:
        return True

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


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


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(daemon_mod, "time", fake)
    return fake


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[timedelta]]:
    """The daemon's wall clock, shifted by the timedelta the test puts in the list."""
    shift = [timedelta(0)]
    monkeypatch.setattr(daemon_mod, "utcnow", lambda: utcnow() + shift[0])
    yield shift


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    template = Template(name="slow", command=("/bin/true",), timeout_seconds=TIMEOUT)
    settings = Settings(
        database=str(tmp_path / "runs.db"),
        runs_dir=tmp_path / "runs",
        max_concurrent_runs=1,
        cancel_grace_seconds=GRACE,
        templates={"slow": template},
    )
    store = Store.open(settings.database_url)
    d = Daemon(settings, store, notifier=Notifier())
    yield d
    for run in list(d.runs.values()):
        d._forget(run)
    store.close()


def start_run(d: Daemon, sim: int, *, adopted: bool) -> tuple[str, FakeHandle]:
    """A RUNNING row tracked by the daemon, freshly launched or adopted after a restart."""
    record = d.store.submit("slow", "{}")
    proc = process_record(sim)
    d.store.mark_running(
        record.id,
        pid=proc.pid,
        pgid=proc.pgid,
        run_dir=str(d.settings.runs_dir / record.id),
        boot_id=proc.boot_id,
        pid_start_ticks=proc.start_ticks,
        keeper_pid=proc.keeper_pid,
        keeper_start_ticks=proc.keeper_start_ticks,
    )
    row = d.store.get(record.id)
    handle = FakeHandle(proc)
    if not adopted:
        # As _adopt_started passes it: the PENDING row as read before the launch.
        row = dataclasses.replace(row, pid_start_ticks=None, started_at=daemon_mod.utcnow())
    d._track(row, handle, d.settings.runs_dir / record.id, d.settings.templates["slow"])
    return record.id, handle


@pytest.mark.parametrize("adopted", [False, True])
@pytest.mark.parametrize("jump", [timedelta(days=1), timedelta(days=-1)])
def test_wall_clock_jump_neither_fires_nor_delays_the_timeout(
    daemon: Daemon,
    clock: FakeClock,
    wall: list[timedelta],
    sim: int,
    adopted: bool,
    jump: timedelta,
) -> None:
    if adopted:
        wall[0] = jump  # the clock jumped while the daemon was away, before it re-adopted
    run_id, handle = start_run(daemon, sim, adopted=adopted)
    wall[0] = jump
    daemon._check_deadlines()
    assert handle.signals == [], "a wall-clock jump fired the timeout"
    clock.offset = TIMEOUT - 1
    daemon._check_deadlines()
    assert handle.signals == []
    clock.offset = TIMEOUT + 1
    daemon._check_deadlines()
    assert handle.signals == [signal.SIGTERM], "the timeout must fire on the monotonic clock"
    assert daemon.store.get(run_id).timed_out_at is not None
    # The grace period, too, is monotonic: a jump back does not hold the SIGKILL back.
    wall[0] = -jump
    clock.offset = TIMEOUT + 1 + GRACE - 1
    daemon._check_deadlines()
    assert handle.signals == [signal.SIGTERM]
    clock.offset = TIMEOUT + 1 + GRACE + 1
    daemon._check_deadlines()
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
    paths = [PACKAGE / name for name in DEADLINE_MODULES]
    for package in DEADLINE_PACKAGES:
        paths += sorted((PACKAGE / package).rglob("*.py"))
    for path in paths:
        found += _wall_clock_reads(path)
    assert len(paths) > len(DEADLINE_MODULES)  # the packages were found
    assert found == []
