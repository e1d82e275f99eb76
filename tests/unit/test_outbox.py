"""The outbox on a real SQLite file: a write SQLite refuses holds back no other (issue 20, 6)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from supervisor.daemon.outbox import Outbox
from supervisor.db import RowChange, Store, final_change
from supervisor.states import RunStatus

POISON = """CREATE TRIGGER poison BEFORE UPDATE ON runs WHEN {when}
BEGIN SELECT RAISE(ABORT, 'poisoned by a test trigger'); END"""


def cancel(run_id: str) -> RowChange:
    return final_change(run_id, RunStatus.CANCELLED, reason="test", expect=[RunStatus.PENDING])


def add_trigger(db: Path, when: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(POISON.format(when=when))
    conn.close()


def test_one_refused_change_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """Before the fix the whole batch failed and was retried forever: the good change never
    went in."""
    db = tmp_path / "runs.db"
    store = Store.open(f"sqlite:///{db}", busy_timeout_ms=50, write_attempts=1)
    try:
        bad, good = store.submit("sim", "{}").id, store.submit("sim", "{}").id
        add_trigger(db, f"OLD.id = '{bad}'")
        outbox = Outbox(store)
        seen: dict[str, bool] = {}
        for run_id in (bad, good):
            outbox.add(cancel(run_id), lambda applied, r=run_id: seen.__setitem__(r, applied))
        assert outbox.flush(0.0)
        assert store.get(good).status == "CANCELLED"
        assert store.get(bad).status == "PENDING"
        assert seen == {bad: False, good: True}
        assert len(outbox) == 0 and outbox.blocked_since is None
    finally:
        store.close()


def test_writes_are_kept_while_the_database_refuses_every_one(tmp_path: Path) -> None:
    """Nothing commits alone either (a full disk, a read-only file): all is kept, then goes
    in once the database takes writes again."""
    db = tmp_path / "runs.db"
    store = Store.open(f"sqlite:///{db}", busy_timeout_ms=50, write_attempts=1)
    try:
        first, second = store.submit("sim", "{}").id, store.submit("sim", "{}").id
        add_trigger(db, "1")
        outbox = Outbox(store)
        outbox.add(cancel(first))
        outbox.add(cancel(second))
        assert not outbox.flush(0.0)
        assert len(outbox) == 2 and outbox.blocked_since == 0.0
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("DROP TRIGGER poison")
        conn.close()
        assert outbox.flush(outbox.retry_at)
        assert {store.get(first).status, store.get(second).status} == {"CANCELLED"}
    finally:
        store.close()
