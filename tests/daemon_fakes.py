"""The daemon's unit tier: a fake executor and a clock the test moves, around a real Daemon and
a real SQLite store. Decisions (recovery cases, cancel/timeout races, a database that fails)
are tested here without processes; the system tests do the same with real ones."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from supervisor.daemon import Daemon
from supervisor.db import Store
from supervisor.errors import LaunchError
from supervisor.executors.backoff import Backoff
from supervisor.executors.base import (
    ExitStatus,
    LaunchSpec,
    ProcessRecord,
    Recovery,
    RunHandle,
    RunRef,
)
from supervisor.executors.local.identity import current_boot_id
from supervisor.notify import Notifier
from supervisor.settings import Settings, Template

FAKE_PID_BASE = 4_000_000  # above any real pid here: nothing real is ever named


class FakeClock:
    """Monotonic and wall time that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.now

    def utcnow(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += timedelta(seconds=seconds)


class FakeHandle:
    """A started run: ends when the test (or a signal it is told to obey) ends it."""

    def __init__(self, record: ProcessRecord, *, obeys: frozenset[int] = frozenset()) -> None:
        self.record = record
        self.signals: list[int] = []
        self.obeys = obeys  # signals that end it at once
        self.status: ExitStatus | None = None
        self.alive = True  # anything left in its group
        self.group_checks = 0
        self.backoff = Backoff()
        self._fd: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False
        self.released = False
        self.timer_only = False  # no descriptor: only the executor's poll() tells of its end

    def end(self, status: ExitStatus, *, leftovers: bool = False) -> None:
        self.status = status
        self.alive = leftovers
        if self._fd is not None:
            os.eventfd_write(self._fd, 1)

    def fileno(self) -> int | None:
        return None if self.timer_only else self._fd

    def exit_status(self) -> ExitStatus | None:
        return self.status

    def signal_group(self, sig: int) -> bool:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.backoff.reset()  # as the real handles do: looks come soon after a SIGKILL
        if sig in self.obeys or sig == signal.SIGKILL:
            if self.status is None:
                self.end(ExitStatus(None, sig))
            self.alive = False
        return True

    def group_alive(self) -> bool:
        self.group_checks += 1
        return self.alive

    def leftover_fileno(self) -> int | None:
        return None

    def group_check_delay(self) -> float:
        return self.backoff.next()

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.closed = True


class FakeLaunch:
    """A launch in flight until the test reports it (or fails it)."""

    def __init__(self, spec: LaunchSpec, handle: FakeHandle, deadline: float) -> None:
        self.run_id = spec.run_id
        self.spec = spec
        self.deadline = deadline
        self.handle = handle
        self.error: str | None = None
        self.external_id: str | None = None
        self.reported = False
        self.abandoned = False
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def report(self) -> None:
        self.reported = True
        os.eventfd_write(self._fd, 1)

    def fail(self, why: str) -> None:
        self.error = why
        os.eventfd_write(self._fd, 1)

    def fileno(self) -> int | None:
        return self._fd

    def poll(self) -> RunHandle | None:
        if self.error is not None:
            os.close(self._fd)
            raise LaunchError(self.error)
        if not self.reported:
            return None
        os.close(self._fd)
        return self.handle

    def abandon(self) -> None:
        self.abandoned = True

    def cancel(self) -> bool:
        return False


@dataclass
class FakeExecutor:
    """Hands out FakeLaunches; answers recover() from a table the test fills."""

    clock: FakeClock
    report_timeout: float = 5.0
    name: str = "fake"
    signals_checkpoints: bool = False
    poll_interval: float | None = None
    runs_dir: Path | None = None
    max_in_flight: int | None = None
    launches: dict[str, FakeLaunch] = field(default_factory=dict)
    found: dict[str, Recovery] = field(default_factory=dict)
    closed: bool = False
    news: set[str] = field(default_factory=set)  # what poll() reports next (timer-watched runs)
    polls: int = 0
    _next_pid: int = FAKE_PID_BASE

    def begin_launch(self, spec: LaunchSpec) -> FakeLaunch:
        self._next_pid += 1
        handle = FakeHandle(make_process(self._next_pid))
        launch = FakeLaunch(spec, handle, self.clock.now + self.report_timeout)
        self.launches[spec.run_id] = launch
        return launch

    def begin_launch_handle_for(self, run_id: str) -> FakeHandle:
        """A handle as a launch by an earlier daemon left it (for recover())."""
        self._next_pid += 1
        return FakeHandle(make_process(self._next_pid))

    def poll(self) -> tuple[str, ...]:
        self.polls += 1
        news, self.news = tuple(self.news), set()
        return news

    def recover(self, ref: RunRef) -> Recovery:
        return self.found[ref.run_id]

    def close(self) -> None:
        self.closed = True

    def adopt_foreign(
        self,
        run_id: str,
        *,
        pid: int | None,
        pgid: int | None,
        started_at: datetime | None,
        start_ticks: int | None,
        record_dir: Path,
    ) -> RunHandle | None:
        return None


def make_process(pid: int) -> ProcessRecord:
    """A process identity that names no real process, started now."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return ProcessRecord(
        pid=pid,
        pgid=pid,
        start_ticks=int(uptime * os.sysconf("SC_CLK_TCK")),
        boot_id=current_boot_id(),
        keeper_pid=pid + 1,
        keeper_start_ticks=1,
    )


def make_daemon(
    tmp_path: Path, *, timeout: float | None = None, grace: float = 10.0, limit: int = 2
) -> Iterator[tuple[Daemon, FakeExecutor, FakeClock]]:
    """A Daemon on a real SQLite file with the fake executor and clock (a generator fixture)."""
    template = Template(name="sim", command=("/bin/true",), timeout_seconds=timeout)
    settings = Settings(
        database=str(tmp_path / "runs.db"),
        runs_dir=tmp_path / "runs",
        max_concurrent_runs=limit,
        cancel_grace_seconds=grace,
        templates={"sim": template},
    )
    settings.runs_dir.mkdir()
    store = Store.open(settings.database_url, busy_timeout_ms=50, write_attempts=1)
    clock = FakeClock()
    executor = FakeExecutor(clock)
    daemon = Daemon(settings, store, executor=executor, notifier=Notifier(), clock=clock)
    yield daemon, executor, clock
    for run in list(daemon.runs.values()):
        daemon.supervision.forget(run)
    store.close()


def step(daemon: Daemon) -> None:
    """One pass of the loop, without waiting for anything."""
    daemon.wake()
    daemon.step()


def from_outside(daemon: Daemon) -> Store:
    """A store of another program's on the daemon's database: its writes are news to the loop
    (the daemon's own commits never bring cancels, pauses or foreign rows). Close it after."""
    return Store.open(daemon.settings.database_url)
