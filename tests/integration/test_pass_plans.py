"""The daemon's per-pass queries cost what is PENDING and RUNNING, never the history (issue 23):
every statement a database pass (and the 30 s cycle check) sends is run under EXPLAIN QUERY
PLAN, and none may walk a whole table or index of `runs`, `run_events` or `run_dependencies`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from supervisor.db import Store, corrected_final_change, final_change
from supervisor.states import RunStatus

HISTORY = 3000  # final runs, 3 events each, one in ten with a dependency
SMALL_TABLES = ("queue_pauses", "run_tallies", "CONSTANT")  # a few rows whatever the history
NOW = datetime.now(UTC)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _fill(path: Path) -> None:
    """A history, plus a few PENDING and RUNNING runs with dependencies and a cancel asked."""
    conn = sqlite3.connect(path)
    with conn:
        rows, events, deps = [], [], []
        for i in range(HISTORY):
            run_id = f"{i:012x}"
            at = _stamp(NOW - timedelta(days=300) + timedelta(minutes=i))
            rows.append((run_id, "COMPLETED", "t", at, at, at, 7, 7, 6, "boot"))
            for frm, to in ((None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")):
                events.append((run_id, at, frm, to))
            if i % 10 == 0 and i:
                deps.append((run_id, f"{i - 1:012x}", "afterok"))
        for i, status in enumerate(["PENDING"] * 6 + ["RUNNING"] * 3):
            run_id = f"f{i:011x}"
            at = _stamp(NOW)
            started = at if status == "RUNNING" else None
            rows.append((run_id, status, "t", at, started, None, 8, 8, 7, "boot"))
            deps.append((run_id, f"{i:012x}", "afterany"))
        deps.append(("f00000000000", "f00000000001", None))
        conn.executemany(
            "INSERT INTO runs (id, status, config_json, template, created_at, started_at,"
            " completed_at, pid, pgid, keeper_pid, boot_id) VALUES (?, ?, '{}', ?, ?, ?, ?, ?, ?,"
            " ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO run_events (run_id, at, from_status, to_status) VALUES (?, ?, ?, ?)",
            events,
        )
        conn.executemany(
            "INSERT INTO run_dependencies (run_id, depends_on, kind) VALUES (?, ?, ?)", deps
        )
        conn.execute(
            "UPDATE runs SET cancel_requested_at = ? WHERE id = 'f00000000002'", (_stamp(NOW),)
        )
    conn.close()


@contextmanager
def captured(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the store sends meanwhile, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", listen)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", listen)


# Walks that are bounded by what is active, not by the history, each for its reason:
BOUNDED = {
    # Partial indexes: they hold only the rows that ask for a cancel, and the final statuses
    # no run_events row says (another program's).
    "SCAN runs USING INDEX ix_runs_cancel_requested",
    "SCAN runs USING INDEX ix_runs_final_unconfirmed",
    # queue_marker: back from the newest event, stopping at the first that is not a start
    # (ORDER BY id DESC LIMIT 1): bounded by the starts since the last end.
    "SCAN run_events",
}


def _full_scans(path: Path, statement: str, params: Any) -> list[str]:
    """The plan lines of `statement` that walk a whole big table (or a whole index of one)."""
    if not statement.lstrip().upper().startswith("SELECT"):
        return []
    conn = sqlite3.connect(path)
    try:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params or ()).fetchall()
    finally:
        conn.close()
    bad = []
    for *_, detail in plan:
        if detail in BOUNDED and (detail != "SCAN run_events" or "DESC" in statement):
            continue
        words = str(detail).split()
        # Any walk of a table or index but the small ones (plans name aliases: `dep` is runs).
        if words[:1] == ["SCAN"] and words[1:2] != [] and words[1] not in SMALL_TABLES:
            bad.append(str(detail))
    return bad


# What one database pass asks (supervisor/daemon: the queue's sync and pickup, cancel requests,
# foreign RUNNING rows) and what the 30 s cycle check adds, as the store's own calls.
def _a_pass(store: Store) -> None:
    store.pauses()
    store.dependency_marker()
    cursor = store.last_event_id()
    ended, _ = store.final_events_since(cursor - 5)
    store.have_dependents(ended or ["000000000001"])
    store.doomed_dependents()
    store.pending_dependency_edges()
    store.queue_marker()
    store.running_templates()
    store.pending_runs(4, now=NOW, skip_templates=["paused"], room={"t": 2})
    store.next_not_before(NOW)
    store.cancel_requests()
    store.foreign_running()


# What a start reads before it serves: the runs to adopt, the runs another program overturned,
# the hooks still to run (the last week's ends).
def _a_start(store: Store) -> None:
    store.active_runs()
    store.overturned_runs("boot")
    store.unhooked_runs(None, NOW - timedelta(days=7))
    store.unhooked_runs(["t"], NOW - timedelta(days=7))


PASSES: dict[str, Callable[[Store], None]] = {
    "a database pass and the cycle check": _a_pass,
    "a daemon start": _a_start,
}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_no_pass_query_walks_the_history(store: Store, db_path: Path, name: str) -> None:
    _fill(db_path)
    with captured(store) as sent:
        PASSES[name](store)

    assert len(sent) >= 4
    scans = {s: bad for s, p in sent if (bad := _full_scans(db_path, s, p))}
    assert not scans, "\n\n".join(f"{s}\n  -> {b}" for s, b in scans.items())


def test_overturned_runs_are_the_final_statuses_only_another_program_wrote(
    store: Store, db_path: Path
) -> None:
    _fill(db_path)  # the history: final rows of this boot, each with its events
    ours, theirs, foreign_row = "f00000000006", "f00000000007", "e00000000001"
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO runs (id, status, config_json, template, created_at, keeper_pid,"
            " boot_id) VALUES (?, 'FAILED', '{}', 't', ?, 5, 'boot')",
            (foreign_row, _stamp(NOW)),
        )
        # A GUI marks a live run FAILED: no run_events row says so.
        conn.execute("UPDATE runs SET status = 'FAILED' WHERE id = ?", (theirs,))
    conn.close()
    assert store.commit_batch([final_change(ours, RunStatus.COMPLETED, reason="exit 0")]) == [True]

    found = {r.id for r in store.overturned_runs("boot")}

    assert found == {theirs, foreign_row}
    # The daemon writes the true outcome over the GUI's: no longer a candidate.
    fix = corrected_final_change(theirs, RunStatus.FAILED, RunStatus.COMPLETED, reason="exit 0")
    assert store.commit_batch([fix]) == [True]
    assert {r.id for r in store.overturned_runs("boot")} == {foreign_row}
