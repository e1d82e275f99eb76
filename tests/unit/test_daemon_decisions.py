"""The loop's decisions with a fake executor and a clock the test moves (tests/daemon_fakes.py):
launches in flight, batched writes, a database that fails mid-claim, a cancel racing a
timeout, and what a lingering group costs. Real SQLite file, no processes."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, from_outside, make_daemon, step

from supervisor.daemon import Daemon
from supervisor.daemon.watching import _shared_parent
from supervisor.executors.backoff import GROUP_CHECK_MAX_SECONDS
from supervisor.executors.base import Adopted, ExitStatus

Rig = tuple[Daemon, FakeExecutor, FakeClock]
TIMEOUT = 100.0
GRACE = 10.0
LINGER_SECONDS = 60.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_daemon(tmp_path, timeout=TIMEOUT, grace=GRACE, limit=3)


def sync(daemon: Daemon) -> None:
    """A pass that also looks at the database."""
    daemon._next_db_poll = 0.0
    step(daemon)


class WriteLock:
    """Another connection holding the database's write lock."""

    def __init__(self, daemon: Daemon) -> None:
        path = daemon.settings.database_path
        assert path is not None
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


def test_launches_are_in_flight_together_and_start_in_one_commit(rig: Rig) -> None:
    daemon, executor, _ = rig
    ids = [daemon.store.submit("sim", "{}").id for _ in range(3)]
    sync(daemon)
    assert sorted(executor.launches) == sorted(ids), "all three begun in one pass"
    assert all(daemon.store.get(i).status == "PENDING" for i in ids)
    # A cancel is served while the launches are still in flight ...
    with contextlib.closing(from_outside(daemon)) as outside:
        outside.request_cancel(ids[0])
    sync(daemon)
    assert ids[0] in daemon.launching
    writes = daemon.store.status_writes
    for run_id in ids:
        executor.launches[run_id].report()
    step(daemon)
    assert daemon.store.status_writes == writes + 1, "the starts share one transaction"
    for run_id in ids:
        rec = daemon.store.get(run_id)
        assert rec.status == "RUNNING" and rec.pid == executor.launches[run_id].handle.record.pid
    # ... and reaches the run as soon as it has a process.
    assert executor.launches[ids[0]].handle.signals == [signal.SIGTERM]


def test_a_failed_launch_fails_the_run_and_frees_its_slot(rig: Rig) -> None:
    daemon, executor, _ = rig
    run_id = daemon.store.submit("sim", "{}").id
    sync(daemon)
    executor.launches[run_id].fail("the keeper vanished")
    step(daemon)
    rec = daemon.store.get(run_id)
    assert rec.status == "FAILED" and rec.error_message is not None
    assert "the keeper vanished" in rec.error_message
    assert not daemon.launching


def test_claim_found_after_restart_while_the_database_fails(rig: Rig) -> None:
    """Defect 1: the RUNNING write fails; the run stays tracked, keeps its slot, lands later."""
    daemon, executor, _ = rig
    daemon.settings = daemon.settings.__class__(
        **{**daemon.settings.__dict__, "max_concurrent_runs": 1}
    )
    claimed = daemon.store.submit("sim", "{}").id
    assert daemon.store.claim_many([claimed]) == [claimed]  # as a daemon that died left it
    waiting = daemon.store.submit("sim", "{}").id
    handle = executor.begin_launch_handle_for(claimed)
    executor.found[claimed] = Adopted(handle)
    lock = WriteLock(daemon)
    daemon.recover()
    step(daemon)
    assert claimed in daemon.runs and not handle.closed
    assert daemon.outbox.blocked_since is not None
    assert daemon.store.get(claimed).status == "PENDING"
    lock.release()
    clock_step_past_retry(daemon)
    assert daemon.store.get(claimed).status == "RUNNING"
    sync(daemon)
    assert daemon.store.get(waiting).status == "PENDING", "the slot is still the claimed run's"
    assert waiting not in executor.launches
    handle.end(ExitStatus(0, None))
    step(daemon)
    assert daemon.store.get(claimed).status == "COMPLETED"
    sync(daemon)
    assert waiting in executor.launches


def clock_step_past_retry(daemon: Daemon) -> None:
    clock = daemon.clock
    assert isinstance(clock, FakeClock)
    clock.advance(daemon.outbox.retry_at - clock.now + 0.001)
    step(daemon)


def test_cancel_shortly_before_the_timeout_is_a_cancel(rig: Rig) -> None:
    """Defect 2, deterministic: the cancel came first, the timeout passes during its grace."""
    daemon, executor, clock = rig
    run_id = daemon.store.submit("sim", "{}").id
    sync(daemon)
    executor.launches[run_id].report()
    step(daemon)
    handle = executor.launches[run_id].handle
    clock.advance(TIMEOUT - 1)
    with contextlib.closing(from_outside(daemon)) as outside:
        outside.request_cancel(run_id)
    sync(daemon)
    assert handle.signals == [signal.SIGTERM]
    clock.advance(2)  # past the timeout, inside the grace
    step(daemon)
    assert handle.signals == [signal.SIGTERM]
    clock.advance(GRACE)
    step(daemon)
    assert handle.signals == [signal.SIGTERM, signal.SIGKILL]
    step(daemon)
    rec = daemon.store.get(run_id)
    assert rec.status == "CANCELLED" and rec.timed_out_at is None


def test_a_lingering_group_costs_a_bounded_number_of_looks(rig: Rig) -> None:
    """Defect 5: a leftover that outlives its simulation for a minute is looked at a few
    dozen times, not every 50 ms (1,200 /proc scans)."""
    daemon, executor, clock = rig
    run_id = daemon.store.submit("sim", "{}").id
    sync(daemon)
    executor.launches[run_id].report()
    step(daemon)
    handle = executor.launches[run_id].handle
    handle.obeys = frozenset()  # its leftover ignores SIGTERM
    handle.end(ExitStatus(0, None), leftovers=True)
    step(daemon)
    assert handle.signals == [signal.SIGTERM]
    looks_before = handle.group_checks
    end = clock.now + LINGER_SECONDS
    while clock.now < end:
        clock.advance(min(daemon._next_timeout(), 1.0) or 0.001)
        step(daemon)
    looks = handle.group_checks - looks_before
    assert signal.SIGKILL in handle.signals
    # Doubling from 50 ms to GROUP_CHECK_MAX_SECONDS, then at that pace.
    assert looks <= LINGER_SECONDS / GROUP_CHECK_MAX_SECONDS + 10, looks
    handle.alive = False
    clock.advance(GROUP_CHECK_MAX_SECONDS)
    step(daemon)
    assert daemon.store.get(run_id).status == "COMPLETED"


def test_a_gui_that_starts_the_run_itself_never_gets_it_run_twice(rig: Rig) -> None:
    """FUSION's GUI writes RUNNING with its own pid while our launch of the row is in flight:
    our RUNNING write is refused, and our copy is stopped at once (only one copy runs)."""
    daemon, executor, _ = rig
    run_id = daemon.store.submit("sim", "{}").id
    sync(daemon)
    assert run_id in executor.launches
    lock = WriteLock(daemon)  # as the GUI: a plain UPDATE from another connection
    lock.conn.execute(
        "UPDATE runs SET status='RUNNING', pid=4200000, pgid=4200000 WHERE id=?", (run_id,)
    )
    lock.release()
    executor.launches[run_id].report()
    step(daemon)
    ours = executor.launches[run_id].handle
    assert ours.signals == [signal.SIGKILL] and ours.closed
    rec = daemon.store.get(run_id)
    assert rec.pid == 4200000, "the GUI's process is the run's"


def test_one_watcher_serves_runs_and_database_only_side_by_side_alone(tmp_path: Path) -> None:
    """The default layout (runs.db beside runs/) gets one recursive watch of their folder; a
    folder with anything else in it (a home directory) never gets a recursive watch."""
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    (state / "runs.db").write_text("")
    assert _shared_parent(state / "runs", state / "runs.db")
    (state / "other").mkdir()
    assert not _shared_parent(state / "runs", state / "runs.db")
    assert not _shared_parent(tmp_path / "elsewhere" / "runs", state / "runs.db")
