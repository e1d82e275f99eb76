"""The sqlite3 reader of `runsup metrics` (supervisor.db.quickread): the Store's figures, and
only on a database it may read without the Store (at head, WAL)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from supervisor.db import Store, engine, migrate, quickread
from supervisor.db.quickread import QuickReader

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def test_its_constants_are_the_stores() -> None:
    assert quickread.HEAD_REVISION == migrate.HEAD_REVISION
    assert quickread.BUSY_TIMEOUT_MS == engine.BUSY_TIMEOUT_MS


def test_it_reads_what_the_store_reads(store: Store, db_path: Path) -> None:
    rows = [
        ("000000000001", "COMPLETED", "a", NOW - timedelta(minutes=9), 30),
        ("000000000002", "FAILED", "b", NOW - timedelta(minutes=8), 7200),
        ("000000000003", "RUNNING", "zz", NOW - timedelta(minutes=7), None),
        ("000000000004", "PENDING", "a", None, None),
    ]
    with store.engine.begin() as conn:
        for run_id, status, template, started, seconds in rows:
            end = None if seconds is None else _stamp(started + timedelta(seconds=seconds))
            conn.execute(
                text(
                    "INSERT INTO runs (id, status, config_json, template, created_at,"
                    " started_at, completed_at, cpus) VALUES (:id, :s, '{}', :t, :c, :st, :e, 2)"
                ),
                {
                    "id": run_id,
                    "s": status,
                    "t": template,
                    "c": _stamp(NOW - timedelta(hours=1)),
                    "st": None if started is None else _stamp(started),
                    "e": end,
                },
            )
    reader = QuickReader.open(db_path)
    assert reader is not None
    try:
        quick = reader.run_stats(["a", "b"], "other", NOW)
    finally:
        reader.close()
    assert quick == store.run_stats(["a", "b"], "other", NOW)
    assert quick.status_counts["RUNNING"] == 1 and quick.reserved_cpus == 2


def test_a_database_not_at_head_is_left_to_the_store(store: Store, db_path: Path) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
    assert QuickReader.open(db_path) is None


def test_a_database_without_a_schema_or_file_is_left_to_the_store(tmp_path: Path) -> None:
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()
    assert QuickReader.open(bare) is None
    missing = tmp_path / "missing.db"
    assert QuickReader.open(missing) is None
    assert not missing.exists()  # never creates one


def test_metrics_imports_no_sqlalchemy_nor_structlog(store: Store, db_path: Path) -> None:
    """The point of the reader: `runsup metrics`'s path to the figures imports no SQLAlchemy
    (nor structlog, whose only events there are debug ones the quiet set-up drops)."""
    code = (
        "import sys\n"
        "from supervisor.db.quickread import QuickReader\n"
        "from supervisor.metrics import collector as metrics\n"
        "from supervisor.settings import load_settings\n"
        "from supervisor.logs import configure_on_first_use\n"
        "configure_on_first_use(quiet=True)\n"
        f"r = QuickReader.open(__import__('pathlib').Path({str(db_path)!r}))\n"
        "assert r is not None\n"
        "metrics.render(r, load_settings(None))\n"
        "heavy = ('sqlalchemy', 'alembic', 'structlog')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
