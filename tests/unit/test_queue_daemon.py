"""The daemon's queue decisions on a real store, with the fake executor and clock: order,
waits, pauses, limits, dependencies, cycles and retries."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, from_outside, make_daemon, step

from supervisor.daemon import Daemon
from supervisor.executors.base import ExitStatus

Rig = tuple[Daemon, FakeExecutor, FakeClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_daemon(tmp_path, limit=4)


def configure(daemon: Daemon, **template: object) -> None:
    """Give template `sim` these settings (as a reload would)."""
    sim = replace(daemon.settings.templates["sim"], **template)  # type: ignore[arg-type]
    daemon.settings = replace(
        daemon.settings, templates={"sim": sim, "other": replace(sim, name="other")}
    )


def look(daemon: Daemon) -> None:
    """One pass that looks at the database (as after another program's commit)."""
    daemon._next_db_poll = 0.0
    daemon._db_unsynced = True
    step(daemon)


def launched(executor: FakeExecutor) -> list[str]:
    return list(executor.launches)


def run_to_running(rig: Rig, run_id: str) -> None:
    daemon, executor, _ = rig
    executor.launches[run_id].report()
    step(daemon)
    assert daemon.store.get(run_id).status == "RUNNING"


def end(rig: Rig, run_id: str, status: ExitStatus) -> None:
    daemon, executor, _ = rig
    executor.launches[run_id].handle.end(status)
    step(daemon)


def raw(daemon: Daemon, sql: str, *args: object) -> None:
    conn = sqlite3.connect(daemon.settings.database_path or "")
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def test_highest_priority_first_then_oldest(rig: Rig) -> None:
    daemon, executor, _ = rig
    daemon.settings = replace(daemon.settings, max_concurrent_runs=1)
    low = daemon.store.submit("sim", "{}").id
    high = daemon.store.submit("sim", "{}", priority=5).id
    high_later = daemon.store.submit("sim", "{}", priority=5).id
    negative = daemon.store.submit("sim", "{}", priority=-1).id
    order = []
    for _ in range(4):
        look(daemon)
        (new,) = [r for r in launched(executor) if r not in order]
        order.append(new)
        run_to_running(rig, new)
        end(rig, new, ExitStatus(0, None))
    assert order == [high, high_later, low, negative]


def test_not_before_waits_and_the_loop_wakes_for_it(rig: Rig) -> None:
    daemon, executor, clock = rig
    later = daemon.store.submit("sim", "{}").id
    when = (clock.wall + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S")  # ISO, as a GUI
    raw(daemon, "UPDATE runs SET not_before = ? WHERE id = ?", when, later)
    now = daemon.store.submit("sim", "{}").id
    look(daemon)
    assert launched(executor) == [now]
    due = daemon.queue.next_due()
    assert due is not None and due == pytest.approx(clock.now + 30)
    clock.advance(31)
    step(daemon)  # no database change: the deadline alone brings the look
    assert launched(executor) == [now, later]


def test_pause_everything_then_a_template(rig: Rig) -> None:
    daemon, executor, _ = rig
    configure(daemon)
    with contextlib.closing(from_outside(daemon)) as outside:
        outside.pause("*", "maintenance")
    a = daemon.store.submit("sim", "{}").id
    b = daemon.store.submit("other", "{}").id
    look(daemon)
    assert launched(executor) == []
    assert "paused: everything" in daemon.status.text()
    daemon.store.resume("*")
    with contextlib.closing(from_outside(daemon)) as outside:
        outside.pause("sim")
    look(daemon)
    assert launched(executor) == [b]
    assert "paused: sim" in daemon.status.text()
    daemon.store.resume("sim")
    look(daemon)
    assert launched(executor) == [b, a]
    assert "paused" not in daemon.status.text()


def test_max_concurrent_counts_running_and_launching(rig: Rig) -> None:
    daemon, executor, _ = rig
    configure(daemon, max_concurrent=2)
    ids = [daemon.store.submit("sim", "{}").id for _ in range(4)]
    other = daemon.store.submit("other", "{}").id
    look(daemon)
    assert launched(executor) == [ids[0], ids[1], other]  # other's own limit is 2 too
    run_to_running(rig, ids[0])
    look(daemon)
    assert launched(executor) == [ids[0], ids[1], other]
    end(rig, ids[0], ExitStatus(0, None))
    look(daemon)
    assert launched(executor) == [ids[0], ids[1], other, ids[2]]


def test_afterok_chain_cancels_down_from_a_failure(rig: Rig) -> None:
    daemon, executor, _ = rig
    first = daemon.store.submit("sim", "{}").id
    second = daemon.store.submit("sim", "{}", after=[first]).id
    third = daemon.store.submit("sim", "{}", after=[second]).id
    anyway = daemon.store.submit("sim", "{}", after_any=[second]).id
    look(daemon)
    assert launched(executor) == [first]
    run_to_running(rig, first)
    end(rig, first, ExitStatus(2, None))
    look(daemon)
    assert daemon.store.get(first).status == "FAILED"
    for run_id, dep in ((second, first), (third, second)):
        row = daemon.store.get(run_id)
        assert row.status == "CANCELLED" and row.started_at is None
        assert row.error_message == f"dependency {dep} ended " + (
            "FAILED" if dep == first else "CANCELLED"
        )
    assert launched(executor) == [first, anyway]  # afterany: second is final, whatever it is


def test_afterok_waits_for_completed(rig: Rig) -> None:
    daemon, executor, _ = rig
    first = daemon.store.submit("sim", "{}").id
    second = daemon.store.submit("sim", "{}", after=[first]).id
    look(daemon)
    run_to_running(rig, first)
    look(daemon)
    assert launched(executor) == [first]
    end(rig, first, ExitStatus(0, None))
    look(daemon)
    assert launched(executor) == [first, second]


def test_foreign_missing_dependency_and_cycle_are_cancelled(rig: Rig) -> None:
    daemon, executor, _ = rig
    orphan = daemon.store.submit("sim", "{}").id
    a = daemon.store.submit("sim", "{}").id
    b = daemon.store.submit("sim", "{}").id
    raw(daemon, "INSERT INTO run_dependencies VALUES (?, ?, NULL)", orphan, "0123456789ab")
    raw(daemon, "INSERT INTO run_dependencies VALUES (?, ?, 'afterany')", a, b)
    raw(daemon, "INSERT INTO run_dependencies VALUES (?, ?, 'afterok')", b, a)
    look(daemon)
    assert launched(executor) == []
    assert daemon.store.get(orphan).error_message == "dependency 0123456789ab does not exist"
    assert (
        daemon.store.get(a).error_message
        == f"dependency cycle: {min(a, b)} -> {max(a, b)} -> {min(a, b)}"
    )
    assert {daemon.store.get(r).status for r in (orphan, a, b)} == {"CANCELLED"}


def test_retry_goes_back_to_pending_with_backoff_then_completes(rig: Rig) -> None:
    daemon, executor, clock = rig
    configure(daemon, max_attempts=3, retry_delay_seconds=10)
    run_id = daemon.store.submit("sim", "{}").id
    look(daemon)
    run_to_running(rig, run_id)
    end(rig, run_id, ExitStatus(None, 9))
    row = daemon.store.get(run_id)
    assert (row.status, row.attempt, row.pid, row.exit_signal) == ("PENDING", 2, None, None)
    assert row.not_before == clock.wall + timedelta(seconds=10)
    assert row.progress_offset == 0 and row.started_at is None
    events = daemon.store.events(run_id)
    assert events[-1].from_status == "RUNNING" and events[-1].to_status == "PENDING"
    assert "attempt 1 of 3 ended signal (killed by SIGKILL)" in (events[-1].reason or "")
    executor.launches.pop(run_id)
    look(daemon)
    assert run_id not in executor.launches  # not before its time
    clock.advance(10)
    step(daemon)
    run_to_running(rig, run_id)
    end(rig, run_id, ExitStatus(None, 11))
    row = daemon.store.get(run_id)
    assert row.attempt == 3 and row.not_before == clock.wall + timedelta(seconds=20)
    executor.launches.pop(run_id)
    clock.advance(20)
    step(daemon)
    run_to_running(rig, run_id)
    end(rig, run_id, ExitStatus(None, 11))
    row = daemon.store.get(run_id)
    assert (row.status, row.attempt, row.exit_signal) == ("FAILED", 3, 11)  # out of attempts


def test_no_retry_of_a_cancel_an_unlisted_exit_or_a_failed_start(rig: Rig) -> None:
    daemon, executor, _ = rig
    configure(daemon, max_attempts=5, retry_on=("exit:3", "signal"))
    cancel, other_code, unstartable, code3 = (daemon.store.submit("sim", "{}").id for _ in range(4))
    look(daemon)
    for run_id in (cancel, other_code, code3):
        run_to_running(rig, run_id)
    executor.launches[unstartable].fail("no such program")
    with contextlib.closing(from_outside(daemon)) as outside:
        outside.request_cancel(cancel)
    look(daemon)
    end(rig, cancel, ExitStatus(None, 9))  # a signal, but it was asked to stop
    end(rig, other_code, ExitStatus(4, None))
    end(rig, code3, ExitStatus(3, None))
    assert daemon.store.get(cancel).status == "CANCELLED"
    assert daemon.store.get(other_code).status == "FAILED"
    assert daemon.store.get(unstartable).status == "FAILED"
    assert daemon.store.get(code3).status == "PENDING"
    assert json.loads(daemon.store.get(code3).config_json) == {}
