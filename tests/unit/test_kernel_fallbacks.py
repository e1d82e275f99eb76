"""The decisions that keep every promise on older kernels (issue 19), with the fake executor
and clock: a run that ended while away with its group still alive, a run whose end only the
executor's timer can see, and what `runsup check` and the store say of the platform."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, FakeHandle, make_daemon, make_process, step

from supervisor.checks.platform import PYTHON_MINIMUM, kernel_check, versions_check
from supervisor.checks.result import Status
from supervisor.daemon import Daemon
from supervisor.db.engine import SQLITE_MINIMUM, sqlite_version_problem
from supervisor.executors.base import EndedWhileAway, ExitStatus, ProcessRecord
from supervisor.executors.local.cgroups import CapSupport, CgroupVersion
from supervisor.executors.local.means import FULL, KernelMeans

GRACE = 10.0
Rig = tuple[Daemon, FakeExecutor, FakeClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_daemon(tmp_path, grace=GRACE)


def running_row(daemon: Daemon, proc: ProcessRecord) -> str:
    """A RUNNING row as an earlier daemon left it."""
    record = daemon.store.submit("sim", "{}")
    daemon.store.mark_running(record.id, proc, run_dir=str(daemon.settings.runs_dir / record.id))
    return record.id


def test_ended_while_away_with_its_group_alive_is_stopped_then_settled(rig: Rig) -> None:
    """The leader ended (status kept) while no daemon watched, a child lives on: SIGTERM, then
    SIGKILL after the grace, and only then the row, with the status the keeper kept."""
    daemon, executor, clock = rig
    proc = make_process(4_100_000)
    run_id = running_row(daemon, proc)
    leftover = FakeHandle(proc)  # ignores SIGTERM
    leftover.end(ExitStatus(3, None), leftovers=True)
    executor.found[run_id] = EndedWhileAway(ExitStatus(3, None), proc, leftover=leftover)
    daemon.recover()
    step(daemon)
    assert leftover.signals == [signal.SIGTERM]
    assert daemon.store.get(run_id).status == "RUNNING", "final while its group lives"
    clock.advance(GRACE)
    step(daemon)
    assert leftover.signals == [signal.SIGTERM, signal.SIGKILL]
    clock.advance(1.0)
    step(daemon)
    rec = daemon.store.get(run_id)
    assert rec.status == "FAILED" and rec.exit_code == 3


def test_ended_while_away_with_nothing_left_settles_at_once(rig: Rig) -> None:
    daemon, executor, _ = rig
    proc = make_process(4_100_010)
    run_id = running_row(daemon, proc)
    executor.found[run_id] = EndedWhileAway(ExitStatus(0, None), proc)
    daemon.recover()
    step(daemon)
    assert daemon.store.get(run_id).status == "COMPLETED"


def test_a_run_only_a_timer_can_watch_ends_when_the_executor_says(rig: Rig) -> None:
    """No pidfds: the handle has no descriptor; the loop polls the executor on its interval."""
    daemon, executor, clock = rig
    executor.poll_interval = 0.5
    run_id = daemon.store.submit("sim", "{}").id
    daemon._next_db_poll = 0.0
    step(daemon)
    executor.launches[run_id].report()
    step(daemon)
    handle = executor.launches[run_id].handle
    handle.timer_only = True
    handle.status = ExitStatus(0, None)
    handle.alive = False
    assert daemon._next_timeout() <= executor.poll_interval  # it wakes to poll
    polls = executor.polls
    executor.news.add(run_id)
    clock.advance(executor.poll_interval)
    step(daemon)
    assert executor.polls > polls
    assert daemon.store.get(run_id).status == "COMPLETED"


V2 = CapSupport(CgroupVersion.V2, None, None, "cgroup v2")


@pytest.mark.parametrize(
    ("means", "status", "words"),
    [
        (FULL, Status.OK, "with group signals"),
        (KernelMeans(pidfds=True, group_signals=False), Status.OK, "killpg"),
        (KernelMeans(pidfds=False, group_signals=False), Status.WARN, "no pidfds"),
    ],
)
def test_runsup_check_names_the_kernel_means(
    means: KernelMeans, status: Status, words: str
) -> None:
    found = kernel_check(means, V2, "4.18.0-553.el8_10.x86_64")
    assert found.status is status
    assert words in found.detail and "4.18.0" in found.detail
    assert found.facts["pidfds"] is means.pidfds
    assert found.facts["group_signals"] is means.group_signals


def test_an_old_sqlite_is_refused_in_one_line() -> None:
    old = (3, 8, 11)
    problem = sqlite_version_problem(old)
    assert problem is not None and "\n" not in problem
    assert "3.8.11" in problem and ".".join(map(str, SQLITE_MINIMUM)) in problem
    assert sqlite_version_problem(SQLITE_MINIMUM) is None
    result = versions_check(old, SQLITE_MINIMUM, (3, 12, 1))
    assert result.status is Status.FAIL and "refuses" in result.detail


def test_versions_check_passes_what_runsup_needs() -> None:
    python = (*PYTHON_MINIMUM, 0)
    result = versions_check((3, 26, 0), SQLITE_MINIMUM, python)  # RHEL 8's SQLite
    assert result.status is Status.OK
    assert result.facts["sqlite_minimum"] == ".".join(map(str, SQLITE_MINIMUM))
