"""Metrics kept as runs finish (run_tallies, migration 0005) on a real SQLite file: the upgrade
counts what is there once, the triggers count every writer's final statuses, and a counter
never goes down (SPEC section 14)."""

from __future__ import annotations

import importlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from supervisor.db import TIME_BUCKETS_SECONDS, Histogram, RunStats, Store
from supervisor.db.engine import make_engine
from supervisor.db.migrate import HEAD_REVISION, SCRIPT_LOCATION
from supervisor.db.tallies import TABLE

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
TEMPLATES = ["a", "b"]
OTHER = "other"
MIGRATION = importlib.import_module("supervisor.db.migrations.versions.0005_run_tallies")


def make_database_at(path: Path, revision: str) -> None:
    """A file whose schema is exactly `revision`, made by our own migrations."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", SCRIPT_LOCATION)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert(conn: sqlite3.Connection, run_id: str, status: str, **cols: Any) -> None:
    """A row as another program writes it: plain sqlite3, any values."""
    values = {
        "id": run_id,
        "status": status,
        "config_json": "{}",
        "template": "a",
        "created_at": _stamp(NOW - timedelta(hours=2)),
        **cols,
    }
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    conn.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", list(values.values()))


def _varied_rows(conn: sqlite3.Connection) -> None:
    """Rows of every kind a full count must see: each status, spans in many buckets, a foreign
    template, out-of-memory failures, garbage timestamps."""
    spans = [0.2, 3, 12, 45, 200, 700, 3000, 9000, 100000, 10**6]
    for i, seconds in enumerate(spans):
        start = NOW - timedelta(hours=1)
        done = {
            "started_at": _stamp(start),
            "completed_at": _stamp(start + timedelta(seconds=seconds)),
        }
        _insert(conn, f"c{i:011d}", "COMPLETED", template="ab"[i % 2], **done)
        _insert(conn, f"f{i:011d}", "FAILED", error_message="out of memory: 1G", **done)
        _insert(conn, f"x{i:011d}", "CANCELLED", template=f"foreign{i}", **done)
    _insert(conn, "p00000000001", "PENDING")
    _insert(conn, "r00000000001", "RUNNING", started_at=_stamp(NOW - timedelta(minutes=3)))
    _insert(conn, "g00000000001", "COMPLETED", started_at="yesterday", completed_at="42")
    _insert(conn, "g00000000002", "FAILED", error_message="exit status 1")


def full_count(path: Path) -> RunStats:
    """The figures as a full count of the rows there are gives them (the scan metrics used to
    make on each scrape), by a plain, slow, obviously right Python loop."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT template, status, error_message,"
            " (julianday(completed_at) - julianday(started_at)) * 86400.0,"
            " (julianday(started_at) - julianday(created_at)) * 86400.0 FROM runs"
        ).fetchall()
    finally:
        conn.close()
    counts: dict[str, int] = {}
    finished: dict[tuple[str, str], int] = {}
    oom: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    for template, status, error, duration, wait in rows:
        label = template if template in TEMPLATES else OTHER
        counts[status] = counts.get(status, 0) + 1
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            finished[(label, status)] = finished.get((label, status), 0) + 1
            if status == "FAILED" and (error or "").startswith("out of memory"):
                oom[label] = oom.get(label, 0) + 1
            if duration is not None:
                durations.setdefault(label, []).append(max(duration, 0.0))
        if wait is not None:
            waits.setdefault(label, []).append(max(wait, 0.0))
    return RunStats(
        status_counts=counts,
        finished=finished,
        out_of_memory=oom,
        durations={t: histogram(v) for t, v in durations.items()},
        queue_waits={t: histogram(v) for t, v in waits.items()},
        oldest_pending_seconds=0.0,
        progress_age_seconds=0.0,
        reserved_cpus=0,
        reserved_memory_bytes=0,
        reserved_gpu_ids=frozenset(),
    )


def histogram(values: list[float]) -> Histogram:
    """A histogram of `values` over the tallies' bounds."""
    cumulative = tuple(sum(1 for v in values if v <= b) for b in TIME_BUCKETS_SECONDS)
    return Histogram(cumulative, len(values), sum(values))


def assert_same_counts(got: RunStats, want: RunStats) -> None:
    """Counters, gauges by status and histograms equal (sums to a microsecond a value)."""
    assert got.status_counts == want.status_counts
    assert got.finished == want.finished
    assert got.out_of_memory == want.out_of_memory
    for name in ("durations", "queue_waits"):
        g, w = getattr(got, name), getattr(want, name)
        assert set(g) == set(w), name
        for t in w:
            assert (g[t].cumulative, g[t].count) == (w[t].cumulative, w[t].count), (name, t)
            assert abs(g[t].total - w[t].total) < 1e-3 * max(1, w[t].count), (name, t)


def test_upgrade_counts_the_rows_already_there_once(tmp_path: Path) -> None:
    path = tmp_path / "r0004.db"
    make_database_at(path, "0004")
    conn = sqlite3.connect(path)
    with conn:
        _varied_rows(conn)
    conn.close()
    want = full_count(path)

    store = Store.open(f"sqlite:///{path}")
    try:
        got = store.run_stats(TEMPLATES, OTHER, NOW)
    finally:
        store.close()

    assert_same_counts(got, want)
    assert want.finished[("a", "COMPLETED")] == 6  # the fixture's rows are really there


def test_foreign_writers_rows_are_counted_by_the_triggers(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Store.open(f"sqlite:///{path}").close()  # a fresh file at head: nothing to backfill
    conn = sqlite3.connect(path)
    with conn:
        _varied_rows(conn)
    with conn:  # a GUI moves its own rows on, one statement at a time
        conn.execute(
            "UPDATE runs SET status = 'RUNNING', started_at = ? WHERE id = 'p00000000001'",
            (_stamp(NOW - timedelta(seconds=30)),),
        )
        conn.execute(
            "UPDATE runs SET status = 'FAILED', completed_at = ?, error_message = ?"
            " WHERE id = 'r00000000001'",
            (_stamp(NOW), "out of memory: killed"),
        )
    conn.close()
    want = full_count(path)

    store = Store.open(f"sqlite:///{path}")
    try:
        got = store.run_stats(TEMPLATES, OTHER, NOW)
    finally:
        store.close()

    assert_same_counts(got, want)
    assert want.out_of_memory["a"] == 11


def test_the_migration_keeps_the_live_bounds_and_its_triggers_are_there(db_path: Path) -> None:
    assert tuple(MIGRATION.TIME_BUCKETS_SECONDS) == TIME_BUCKETS_SECONDS
    assert MIGRATION.TABLE == TABLE
    Store.open(f"sqlite:///{db_path}").close()
    conn = sqlite3.connect(db_path)
    try:
        names = {
            n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        conn.close()
    assert version == HEAD_REVISION
    # A later migration that rebuilds `runs` must make them again: this says so if it forgets.
    assert names >= set(MIGRATION.TRIGGERS)
