"""`runsup db prune` (SPEC section 7) on a real SQLite file: what goes, what stays, what a
reader sees between batches, the counters after, run directories, and bad input."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from supervisor.daemon.pruning import Pruner
from supervisor.db import Store
from supervisor.db.prune import Pruned, prune
from supervisor.errors import ConfigError
from supervisor.retention import prune_runs
from supervisor.settings import RetentionSettings, load_settings

if TYPE_CHECKING:
    from conftest import Runsup

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _rid(prefix: str, n: int) -> str:
    return f"{prefix}{n:0{12 - len(prefix)}x}"


def _run(
    conn: sqlite3.Connection, run_id: str, status: str, ended: datetime | None, **cols: object
) -> None:
    """A run with three events (as the daemon leaves one), written as any program may."""
    created = (ended or NOW) - timedelta(hours=1)
    values: dict[str, object] = {
        "id": run_id,
        "status": status,
        "config_json": "{}",
        "template": "a",
        "created_at": _stamp(created),
        "started_at": _stamp(created + timedelta(minutes=1)) if status != "PENDING" else None,
        "completed_at": _stamp(ended) if ended is not None else None,
        **cols,
    }
    names = ", ".join(values)
    conn.execute(
        f"INSERT INTO runs ({names}) VALUES ({', '.join('?' * len(values))})", list(values.values())
    )
    for frm, to in ((None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", status)):
        conn.execute(
            "INSERT INTO run_events (run_id, at, from_status, to_status) VALUES (?, ?, ?, ?)",
            (run_id, _stamp(created), frm, to),
        )


def _depend(conn: sqlite3.Connection, run_id: str, on: str) -> None:
    conn.execute("INSERT INTO run_dependencies (run_id, depends_on) VALUES (?, ?)", (run_id, on))


def _ids(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r for (r,) in conn.execute("SELECT id FROM runs")}
    finally:
        conn.close()


def test_prune_deletes_what_ended_before_and_keeps_what_is_needed(
    store: Store, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        for n in range(50):
            _run(conn, _rid("0", n), FINAL[n % 3], OLD)
        _run(conn, "aaaaaaaaaaa1", "COMPLETED", NOW - timedelta(days=1))  # too young
        _run(conn, "aaaaaaaaaaa2", "PENDING", None)
        _run(conn, "aaaaaaaaaaa3", "RUNNING", None)
        _run(conn, "aaaaaaaaaaa4", "COMPLETED", None)  # final, no end time: cannot tell
        _run(conn, "aaaaaaaaaaa5", "FAILED", OLD, completed_at="2001-01-01T00:00:00+05:00")
        # Old, but a PENDING run and a RUNNING one (a retry may make it wait again) need them.
        _run(conn, "bbbbbbbbbbb1", "COMPLETED", OLD)
        _run(conn, "bbbbbbbbbbb2", "COMPLETED", OLD)
        _depend(conn, "aaaaaaaaaaa2", "bbbbbbbbbbb1")
        _depend(conn, "aaaaaaaaaaa3", "bbbbbbbbbbb2")
        # Old, and only final runs depend on it: goes, and the edge with it.
        _run(conn, "ccccccccccc1", "COMPLETED", OLD)
        _depend(conn, _rid("0", 1), "ccccccccccc1")
        _depend(conn, "aaaaaaaaaaa1", "ccccccccccc1")
    conn.close()
    finished_before = store.run_stats(["a"], "other", NOW).finished

    done = prune(store, NOW - timedelta(days=30))

    left = _ids(db_path)
    assert left == {
        "aaaaaaaaaaa1",
        "aaaaaaaaaaa2",
        "aaaaaaaaaaa3",
        "aaaaaaaaaaa4",
        "bbbbbbbbbbb1",
        "bbbbbbbbbbb2",
    }
    assert (done.runs, done.events, done.kept_needed) == (52, 52 * 3, 2)
    assert done.dependencies == 2  # both edges of ccccccccccc1
    conn = sqlite3.connect(db_path)
    try:
        orphans = conn.execute(
            "SELECT count(*) FROM run_events WHERE run_id NOT IN (SELECT id FROM runs)"
        ).fetchone()[0]
        edges = conn.execute("SELECT run_id, depends_on FROM run_dependencies").fetchall()
    finally:
        conn.close()
    assert orphans == 0
    assert sorted(edges) == [("aaaaaaaaaaa2", "bbbbbbbbbbb1"), ("aaaaaaaaaaa3", "bbbbbbbbbbb2")]
    stats = store.run_stats(["a"], "other", NOW)
    assert stats.finished == finished_before  # pruned rows stay counted (SPEC section 14)
    assert stats.status_counts == {"COMPLETED": 4, "PENDING": 1, "RUNNING": 1}


def test_a_reader_between_batches_sees_every_run_whole_or_not_at_all(
    store: Store, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        for n in range(3000):
            _run(conn, _rid("1", n), FINAL[n % 3], OLD)
            if n % 10 == 0 and n:
                _depend(conn, _rid("1", n), _rid("1", n - 1))
    conn.close()
    reader = sqlite3.connect(db_path)
    seen: list[int] = []

    def look(batch: Pruned) -> None:
        # After each commit, from another connection: every run has its 3 events, no event
        # or dependency row is left without its run.
        with reader:
            runs = reader.execute("SELECT count(*) FROM runs").fetchone()[0]
            events = reader.execute("SELECT count(*) FROM run_events").fetchone()[0]
            stray = reader.execute(
                "SELECT count(*) FROM run_dependencies"
                " WHERE run_id NOT IN (SELECT id FROM runs)"
                " OR depends_on NOT IN (SELECT id FROM runs)"
            ).fetchone()[0]
        assert events == 3 * runs and stray == 0
        assert not set(batch.run_ids) & {r for (r,) in reader.execute("SELECT id FROM runs")}
        seen.append(runs)

    try:
        done = prune(store, NOW - timedelta(days=30), on_batch=look)
    finally:
        reader.close()

    assert done.runs == 3000 and seen[-1] == 0
    assert len(seen) == done.batches > 3  # small transactions, each seen whole


def test_dry_run_changes_nothing_and_says_the_same(store: Store, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        for n in range(30):
            _run(conn, _rid("2", n), "COMPLETED", OLD)
    conn.close()
    before = _ids(db_path)

    dry = prune(store, NOW, dry_run=True)
    assert _ids(db_path) == before
    wet = prune(store, NOW)
    assert (dry.runs, dry.events) == (wet.runs, wet.events) == (30, 90)


def test_files_go_only_where_runsup_puts_them(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "data").write_text("keep me")
    config = tmp_path / "runsup.toml"
    config.write_text(f'database = "{tmp_path / "runs.db"}"\nruns_dir = "{runs_dir}"\n')
    settings = load_settings(str(config))
    store = Store.open(settings.database_url)
    try:
        conn = sqlite3.connect(tmp_path / "runs.db")
        with conn:
            _run(conn, "dddddddddd01", "COMPLETED", OLD, run_dir=str(runs_dir / "dddddddddd01"))
            # A foreign row whose run_dir names a folder that is not a run directory of ours.
            _run(conn, "dddddddddd02", "FAILED", OLD, run_dir=str(elsewhere))
        conn.close()
        (runs_dir / "dddddddddd01" / "logs").mkdir(parents=True)
        (runs_dir / "dddddddddd01" / "logs" / "sim.log").write_text("done\n")

        done = prune_runs(store, settings, NOW, files=True)
    finally:
        store.close()

    assert done.rows.runs == 2 and done.dirs_removed == 1 and not done.dir_errors
    assert not (runs_dir / "dddddddddd01").exists()
    assert (elsewhere / "data").read_text() == "keep me"


def test_the_command_prunes_and_refuses_bad_input(runsup: Runsup) -> None:
    assert runsup("submit", "--template", "erlang-demo").returncode == 0
    db = runsup.db_path
    conn = sqlite3.connect(db)
    with conn:
        for n in range(5):
            _run(conn, _rid("3", n), "COMPLETED", OLD)
    conn.close()

    dry = runsup("db", "prune", "--keep-days", "30", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["runs"] == 5
    assert len(_ids(db)) == 6
    wet = runsup("db", "prune", "--ended-before", (NOW - timedelta(days=30)).date().isoformat())
    assert wet.returncode == 0, wet.stderr
    assert "pruned 5 runs" in wet.stdout
    assert len(_ids(db)) == 1  # the PENDING run stays

    for args in (
        ("db", "prune"),
        ("db", "prune", "--keep-days", "3", "--ended-before", "2020-01-01"),
        ("db", "prune", "--ended-before", "last tuesday"),
        ("db", "prune", "--keep-days", "-1"),
    ):
        bad = runsup(*args)
        assert bad.returncode != 0, args
        assert "Traceback" not in bad.stderr and bad.stderr.strip(), args
    assert len(_ids(db)) == 1


def test_the_daemon_prunes_once_a_day_on_a_thread_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "runsup.toml"
    base = f'database = "{tmp_path / "runs.db"}"\nruns_dir = "{tmp_path / "runs"}"\n'
    config.write_text(base + "[retention]\nkeep_days = 30\nfiles = true\n")
    settings = load_settings(str(config))
    off = replace(settings, retention=RetentionSettings())
    store = Store.open(settings.database_url)
    store.close()
    conn = sqlite3.connect(tmp_path / "runs.db")
    with conn:
        for n in range(20):
            _run(conn, _rid("4", n), "COMPLETED", OLD)
        _run(conn, "eeeeeeeeeee1", "COMPLETED", NOW - timedelta(days=2))
    conn.close()
    (tmp_path / "runs" / _rid("4", 0)).mkdir(parents=True)
    clock = [1000.0]
    pruner = Pruner(lambda: clock[0], lambda: datetime.now(UTC), first_delay=5.0, interval=86400)

    assert pruner.next_due(off) is None and not pruner.poll(off)  # off by default
    assert not pruner.poll(settings)  # not before its first delay
    clock[0] += 5.0
    try:
        assert pruner.poll(settings)
        deadline = time.monotonic() + 60
        while pruner.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pruner.running
        assert _ids(tmp_path / "runs.db") == {"eeeeeeeeeee1"}
        assert not (tmp_path / "runs" / _rid("4", 0)).exists()
        assert not pruner.poll(settings)  # once a day
        assert pruner.next_due(settings) == clock[0] + 86400
    finally:
        pruner.stop()


def test_retention_settings_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "runsup.toml"
    assert load_settings(None).retention == RetentionSettings()  # off by default
    for bad in ("keep_days = -1", "keep_days = 'week'", "files = 1", "keep = 3"):
        config.write_text(f"[retention]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_settings(str(config))
