"""Schema versioning: an original 15-column database is upgraded in place by `runsup db upgrade`."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from supervisor.db import Store
from supervisor.db.engine import make_engine
from supervisor.db.migrate import HEAD_REVISION, SCRIPT_LOCATION, alembic_head
from supervisor.db.schema import CANCEL_INDEX_NAME, CANCEL_REQUESTED_SQL, QUEUE_ORDER, runs

if TYPE_CHECKING:
    from conftest import PythonWorker, Runsup

ORIGINAL_DDL = """
CREATE TABLE runs (
    id VARCHAR(12) NOT NULL,
    name VARCHAR(255),
    status VARCHAR(20) NOT NULL,
    config_json TEXT NOT NULL,
    template VARCHAR(100) NOT NULL,
    pid INTEGER,
    pgid INTEGER,
    created_at DATETIME NOT NULL,
    started_at DATETIME,
    completed_at DATETIME,
    error_message TEXT,
    current_erlang FLOAT,
    total_erlangs INTEGER,
    current_iteration INTEGER,
    total_iterations INTEGER,
    PRIMARY KEY (id)
);
CREATE INDEX ix_runs_status ON runs (status);
"""
ORIGINAL_COLUMNS = (
    "id",
    "name",
    "status",
    "config_json",
    "template",
    "pid",
    "pgid",
    "created_at",
    "started_at",
    "completed_at",
    "error_message",
    "current_erlang",
    "total_erlangs",
    "current_iteration",
    "total_iterations",
)
ORIGINAL_ROWS: list[tuple[Any, ...]] = [
    # Every nullable column NULL.
    ("a00000000001", None, "PENDING", "{}", "erlang-demo", None, None,
     "2024-01-02 03:04:05.000006", None, None, None, None, None, None, None),
    # A running run with progress, a unicode name and a float load.
    ("a00000000002", "Ströme ✓ 東京", "RUNNING", '{"erlangs": [300.5, 350.25]}', "erlang-demo",
     4242, 4242, "2024-02-03 04:05:06.123456", "2024-02-03 04:05:07.654321", None, None,
     300.5, 2, 7, 10),
    # A failed run with its message, multi-line.
    ("a00000000003", "broken", "FAILED", '{"seed": 7}', "fusion", 99, 98,
     "2024-03-04 05:06:07.000000", "2024-03-04 05:06:08.000000", "2024-03-04 06:00:00.500000",
     "exit code 3\nTraceback: ValueError: ünïcode", 1e-9, 4, 0, 1),
    ("a00000000004", "", "COMPLETED", '{"x": null}', "erlang-demo", 1, 1,
     "2024-04-05 06:07:08.999999", "2024-04-05 06:07:09.000000", "2024-04-05 07:07:09.000000",
     None, 12345.678901234, 3, 10, 10),
    ("a00000000005", None, "CANCELLED", '{"nested": {"a": [1, 2]}}', "erlang-demo", None, None,
     "2024-05-06 07:08:09.000000", None, "2024-05-06 07:09:09.000000",
     "cancelled by user", -0.0, None, None, None),
]  # fmt: skip

# SPEC section 3: the columns of `runs` and their declared types.
SPEC_RUNS_COLUMNS = {
    "id": "VARCHAR(12)",
    "name": "VARCHAR(255)",
    "status": "VARCHAR(20)",
    "config_json": "TEXT",
    "template": "VARCHAR(100)",
    "pid": "INTEGER",
    "pgid": "INTEGER",
    "created_at": "DATETIME",
    "started_at": "DATETIME",
    "completed_at": "DATETIME",
    "error_message": "TEXT",
    "current_erlang": "FLOAT",
    "total_erlangs": "INTEGER",
    "current_iteration": "INTEGER",
    "total_iterations": "INTEGER",
    "exit_code": "INTEGER",
    "exit_signal": "INTEGER",
    "cancel_requested_at": "DATETIME",
    "progress_updated_at": "DATETIME",
    "run_dir": "TEXT",
    "priority": "INTEGER",
    "not_before": "DATETIME",
    "attempt": "INTEGER",
    "sweep_id": "VARCHAR(12)",
    "executor": "VARCHAR(100)",
    "external_id": "TEXT",
    "host": "TEXT",
    "cpus": "INTEGER",
    "gpu_ids": "TEXT",
    "memory_max_bytes": "INTEGER",
    "peak_memory_bytes": "INTEGER",
}
SPEC_NOT_NULL = {"id", "status", "config_json", "template", "created_at"}
SPEC_ADDED = tuple(SPEC_RUNS_COLUMNS)[len(ORIGINAL_COLUMNS) :]
# Added by revision 0003: SPEC sections 9 to 11, and ours.
ADDED_IN_0003 = (*SPEC_ADDED[SPEC_ADDED.index("priority") :], "hook_done_at")
SPEC_EVENTS_COLUMNS = {
    "id": "INTEGER",
    "run_id": "VARCHAR(12)",
    "at": "DATETIME",
    "from_status": "VARCHAR(20)",
    "to_status": "VARCHAR(20)",
    "reason": "TEXT",
}
# column -> (declared type, notnull, position in the primary key)
SPEC_DEPENDENCIES_COLUMNS = {
    "run_id": ("VARCHAR(12)", 1, 1),
    "depends_on": ("VARCHAR(12)", 1, 2),
    "kind": ("VARCHAR(20)", 0, 0),
}
SPEC_PAUSES_COLUMNS = {
    "scope": ("VARCHAR(100)", 1, 1),
    "paused_at": ("DATETIME", 0, 0),
    "reason": ("TEXT", 0, 0),
}
CONCURRENT_OPEN_ROUNDS = 8
OPEN_TIMEOUT_SECONDS = 60


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def make_original_database(path: Path) -> None:
    """The file a program that knew only the original table would have made (rollback journal)."""
    conn = connect(path)
    try:
        conn.executescript(ORIGINAL_DDL)
        marks = ", ".join("?" * len(ORIGINAL_COLUMNS))
        conn.executemany(
            f"INSERT INTO runs ({', '.join(ORIGINAL_COLUMNS)}) VALUES ({marks})", ORIGINAL_ROWS
        )
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


def all_rows(path: Path, table: str, columns: Any) -> list[tuple[Any, ...]]:
    """`columns` of every row of `table`, each with its storage class, by the first column."""
    selected = ", ".join(f"{c}, typeof({c})" for c in columns)
    conn = connect(path)
    try:
        return conn.execute(f"SELECT {selected} FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def original_values(path: Path) -> list[tuple[Any, ...]]:
    """Every original column of every row, with each value's storage class."""
    return all_rows(path, "runs", ORIGINAL_COLUMNS)


def table_info(path: Path, table: str) -> dict[str, tuple[str, int, int]]:
    """column -> (declared type, notnull, pk)."""
    conn = connect(path)
    try:
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    finally:
        conn.close()
    return {r[1]: (r[2], r[3], r[5]) for r in rows}


def scalar(path: Path, sql: str) -> Any:
    conn = connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def schema_dump(path: Path) -> list[tuple[Any, ...]]:
    conn = connect(path)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def status_indexed(path: Path) -> bool:
    """True if some index of `runs` starts with the status column."""
    conn = connect(path)
    try:
        for index in conn.execute("PRAGMA index_list(runs)").fetchall():
            columns = conn.execute(f"PRAGMA index_info('{index[1]}')").fetchall()
            if columns and columns[0][2] == "status":
                return True
    finally:
        conn.close()
    return False


def test_head_revision_constant_is_alembic_head() -> None:
    assert alembic_head() == HEAD_REVISION


def test_upgrade_of_original_database_keeps_every_value(runsup: Runsup, tmp_path: Path) -> None:
    path = tmp_path / "original.db"
    make_original_database(path)
    before = original_values(path)
    assert len(before) == len(ORIGINAL_ROWS)

    result = runsup("db", "upgrade", env={"RUNSUP_DATABASE": str(path)})
    assert result.returncode == 0, result.stderr
    assert HEAD_REVISION in result.stdout

    assert original_values(path) == before
    info = table_info(path, "runs")
    for column in ORIGINAL_COLUMNS:
        assert info[column][0] == SPEC_RUNS_COLUMNS[column], column
    for column in SPEC_ADDED:
        assert column in info, column
        assert scalar(path, f"SELECT count(*) FROM runs WHERE {column} IS NOT NULL") == 0
    assert set(table_info(path, "run_events")) == set(SPEC_EVENTS_COLUMNS)
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION
    assert scalar(path, "SELECT count(*) FROM alembic_version") == 1
    assert scalar(path, "PRAGMA journal_mode") == "wal"
    assert status_indexed(path)
    assert scalar(path, "PRAGMA integrity_check") == "ok"

    # The upgraded file works for the store, old rows included.
    store = Store.open(f"sqlite:///{path}")
    try:
        failed = store.get("a00000000003")
        assert failed.status == "FAILED"
        assert failed.error_message == "exit code 3\nTraceback: ValueError: ünïcode"
        assert store.get("a00000000002").name == "Ströme ✓ 東京"
        assert store.counts() == {
            "PENDING": 1,
            "RUNNING": 1,
            "FAILED": 1,
            "COMPLETED": 1,
            "CANCELLED": 1,
        }
    finally:
        store.close()


def test_second_upgrade_is_a_no_op(runsup: Runsup, tmp_path: Path) -> None:
    path = tmp_path / "original.db"
    make_original_database(path)
    env = {"RUNSUP_DATABASE": str(path)}
    assert runsup("db", "upgrade", env=env).returncode == 0
    schema, values = schema_dump(path), original_values(path)

    again = runsup("db", "upgrade", env=env)

    assert again.returncode == 0, again.stderr
    assert schema_dump(path) == schema
    assert original_values(path) == values
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION


def test_fresh_database_has_the_spec_schema(runsup: Runsup, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "fresh.db"
    result = runsup("db", "upgrade", env={"RUNSUP_DATABASE": str(path)})
    assert result.returncode == 0, result.stderr

    info = table_info(path, "runs")
    for column, declared in SPEC_RUNS_COLUMNS.items():
        assert column in info, f"runs.{column} missing"
        type_, notnull, _pk = info[column]
        assert type_ == declared, f"runs.{column}: {type_} != {declared}"
        assert bool(notnull) == (column in SPEC_NOT_NULL), f"runs.{column} nullability"
    assert info["id"][2] == 1
    extra = set(info) - set(SPEC_RUNS_COLUMNS)
    assert all(not info[c][1] for c in extra), "added columns must be nullable"

    events = table_info(path, "run_events")
    assert {c: t for c, (t, _, _) in events.items()} == SPEC_EVENTS_COLUMNS
    assert events["id"][2] == 1
    assert not events["from_status"][1] and not events["reason"][1]

    assert status_indexed(path)
    assert scalar(path, "PRAGMA journal_mode") == "wal"
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION


# A file as release 0002 left it: a run with every 0002 column set, and its history.
REVISION_0002_ROW = {
    "id": "c00000000001",
    "name": "Ströme ✓",
    "status": "FAILED",
    "config_json": '{"seed": 1}',
    "template": "erlang-demo",
    "pid": 501,
    "pgid": 501,
    "created_at": "2025-01-02 03:04:05.000006",
    "started_at": "2025-01-02 03:04:06.000000",
    "completed_at": "2025-01-02 04:04:06.000000",
    "error_message": "killed by signal 9",
    "current_erlang": 350.25,
    "total_erlangs": 3,
    "current_iteration": 4,
    "total_iterations": 10,
    "exit_code": None,
    "exit_signal": 9,
    "cancel_requested_at": "2025-01-02 04:04:00.000000",
    "progress_updated_at": "2025-01-02 04:03:00.000000",
    "run_dir": "/srv/runs/c00000000001",
    "launch_claimed_at": "2025-01-02 03:04:05.500000",
    "boot_id": "6f1c3e0a-0000-4000-8000-000000000001",
    "pid_start_ticks": 123456,
    "keeper_pid": 500,
    "keeper_start_ticks": 123400,
    "timed_out_at": None,
    "erlang_index": 1,
    "progress_offset": 4096,
    "progress_bad_lines": 2,
}
REVISION_0002_EVENTS = [
    (1, "c00000000001", "2025-01-02 03:04:06.000000", "PENDING", "RUNNING", None),
    (2, "c00000000001", "2025-01-02 04:04:06.000000", "RUNNING", "FAILED", "signal 9"),
]


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


def make_0002_database(path: Path) -> None:
    """A release-0002 file holding one fully set run and its two events."""
    make_database_at(path, "0002")
    conn = connect(path)
    try:
        columns = ", ".join(REVISION_0002_ROW)
        marks = ", ".join("?" * len(REVISION_0002_ROW))
        conn.execute(
            f"INSERT INTO runs ({columns}) VALUES ({marks})", [*REVISION_0002_ROW.values()]
        )
        conn.executemany(
            "INSERT INTO run_events (id, run_id, at, from_status, to_status, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            REVISION_0002_EVENTS,
        )
    finally:
        conn.close()


def test_upgrade_of_0002_database_keeps_every_row_and_value(runsup: Runsup, tmp_path: Path) -> None:
    path = tmp_path / "r0002.db"
    make_0002_database(path)
    assert scalar(path, "SELECT version_num FROM alembic_version") == "0002"
    runs_before = all_rows(path, "runs", REVISION_0002_ROW)
    events_before = all_rows(path, "run_events", SPEC_EVENTS_COLUMNS)
    assert len(runs_before) == 1 and len(events_before) == 2

    result = runsup("db", "upgrade", env={"RUNSUP_DATABASE": str(path)})

    assert result.returncode == 0, result.stderr
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION
    assert all_rows(path, "runs", REVISION_0002_ROW) == runs_before
    assert all_rows(path, "run_events", SPEC_EVENTS_COLUMNS) == events_before
    info = table_info(path, "runs")
    for column in ADDED_IN_0003:
        assert column in info, column
        assert scalar(path, f"SELECT count(*) FROM runs WHERE {column} IS NOT NULL") == 0
    assert scalar(path, "SELECT count(*) FROM run_dependencies") == 0
    assert scalar(path, "SELECT count(*) FROM queue_pauses") == 0
    assert scalar(path, "PRAGMA integrity_check") == "ok"

    store = Store.open(f"sqlite:///{path}")
    try:
        record = store.get("c00000000001")
    finally:
        store.close()
    assert (record.exit_signal, record.progress_offset, record.name) == (9, 4096, "Ströme ✓")
    assert (record.priority, record.attempt, record.executor, record.hook_done_at) == (
        None,
        None,
        None,
        None,
    )


def test_upgrade_of_original_database_adds_the_0003_tables(runsup: Runsup, tmp_path: Path) -> None:
    path = tmp_path / "original.db"
    make_original_database(path)
    assert runsup("db", "upgrade", env={"RUNSUP_DATABASE": str(path)}).returncode == 0
    for column in ADDED_IN_0003:
        assert scalar(path, f"SELECT count(*) FROM runs WHERE {column} IS NOT NULL") == 0
    assert table_info(path, "run_dependencies") == SPEC_DEPENDENCIES_COLUMNS
    assert table_info(path, "queue_pauses") == SPEC_PAUSES_COLUMNS


def test_fresh_database_has_the_spec_queue_tables(runsup: Runsup, tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    assert runsup("db", "upgrade", env={"RUNSUP_DATABASE": str(path)}).returncode == 0

    assert table_info(path, "run_dependencies") == SPEC_DEPENDENCIES_COLUMNS
    assert table_info(path, "queue_pauses") == SPEC_PAUSES_COLUMNS
    assert not table_info(path, "runs")["hook_done_at"][1]
    conn = connect(path)
    try:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(run_dependencies)")}
        assert "ix_run_dependencies_depends_on" in indexes
        columns = conn.execute("PRAGMA index_info('ix_run_dependencies_depends_on')").fetchall()
        assert [c[2] for c in columns] == ["depends_on"]
    finally:
        conn.close()


PENDING_BACKLOG = 10_000
FINISHED_HISTORY = 20_000


def test_pickup_query_walks_the_queue_index_without_sorting(tmp_path: Path) -> None:
    """With 10,000 PENDING rows, the queue's order comes from an index, not a sort of them all."""
    path = tmp_path / "backlog.db"
    Store.open(f"sqlite:///{path}").close()
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO runs (id, status, config_json, template, created_at, priority)"
            " VALUES (?, ?, '{}', 'erlang-demo', ?, ?)",
            (
                (
                    f"{i:012x}",
                    "PENDING" if i < PENDING_BACKLOG else "COMPLETED",
                    f"2025-01-01 00:00:00.{i % 1_000_000:06d}",
                    None if i % 3 else i % 5 - 2,
                )
                for i in range(PENDING_BACKLOG + FINISHED_HISTORY)
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    query = (
        select(runs.c.id)
        .where(runs.c.status == "PENDING", runs.c.launch_claimed_at.is_(None))
        .order_by(*QUEUE_ORDER)
        .limit(8)
    )
    store = Store.open(f"sqlite:///{path}")
    try:
        with store.engine.connect() as sa_conn:
            compiled = query.compile(sa_conn)
            params = tuple(compiled.params[k] for k in compiled.positiontup or ())
            plan = sa_conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).fetchall()
            first = [r[0] for r in sa_conn.execute(query)]
    finally:
        store.close()
    details = [str(r[3]) for r in plan]
    assert any("ix_runs_queue" in d for d in details), details
    assert not any("TEMP B-TREE" in d for d in details), details
    # Highest priority first (NULL counts as 0), then oldest: priority 2 is i % 15 == 9.
    assert first == [f"{i:012x}" for i in range(9, 9 + 8 * 15, 15)]


def test_cancel_requests_are_read_through_their_partial_index(tmp_path: Path) -> None:
    """The daemon's look for cancel requests on every pass touches only the rows that ask."""
    path = tmp_path / "asks.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        waiting = [store.submit("erlang-demo", "{}") for _ in range(3)]
        store.request_cancel(waiting[1].id)
        conn = connect(path)
        try:
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM runs INDEXED BY {CANCEL_INDEX_NAME}"
                f" WHERE {CANCEL_REQUESTED_SQL}"
            ).fetchall()
            indexed = conn.execute(
                f"SELECT count(*) FROM runs INDEXED BY {CANCEL_INDEX_NAME}"
                f" WHERE {CANCEL_REQUESTED_SQL}"
            ).fetchone()
        finally:
            conn.close()
        assert any(CANCEL_INDEX_NAME in str(r[3]) for r in plan), plan
        assert indexed == (1,)
        assert [r.id for r in store.cancel_requests()] == [waiting[1].id]
    finally:
        store.close()


# Opens (creating) the database named on each line once the go line comes; reports the outcome.
OPENER = """
import sys
from supervisor.db import Store
while path := sys.stdin.readline().strip():
    print("armed", flush=True)
    sys.stdin.readline()
    try:
        store = Store.open("sqlite:///" + path)
        store.submit("erlang-demo", "{}")
        store.close()
        print("ok", flush=True)
    except Exception as exc:
        print(type(exc).__name__ + ": " + str(exc).replace("\\n", " "), flush=True)
"""


def test_two_processes_creating_one_file_at_once_both_succeed(
    tmp_path: Path, python_worker: Callable[..., PythonWorker]
) -> None:
    workers = [python_worker(OPENER) for _ in range(2)]
    paths = [tmp_path / f"race{i}.db" for i in range(CONCURRENT_OPEN_ROUNDS)]
    outcomes = []
    for path in paths:
        for w in workers:
            w.send(str(path))
        for w in workers:
            assert w.read_line(OPEN_TIMEOUT_SECONDS) == "armed"
        for w in workers:  # both wait on this line: release them together
            w.send("go")
        outcomes += [(path.name, w.read_line(OPEN_TIMEOUT_SECONDS)) for w in workers]
    for w in workers:
        assert w.finish(OPEN_TIMEOUT_SECONDS) == 0

    assert [o for o in outcomes if o[1] != "ok"] == []
    for path in paths:
        assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION
        assert scalar(path, "SELECT count(*) FROM alembic_version") == 1
        assert scalar(path, "SELECT count(*) FROM runs") == 2
        assert scalar(path, "PRAGMA journal_mode") == "wal"


def test_two_commands_creating_one_file_at_once_both_succeed(
    runsup: Runsup, tmp_path: Path
) -> None:
    path = tmp_path / "cmd.db"
    env = {**runsup.env, "RUNSUP_DATABASE": str(path)}
    procs = [
        subprocess.Popen(
            [str(runsup.command), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (("db", "upgrade"), ("submit", "--template", "erlang-demo"))
    ]
    outputs = [p.communicate(timeout=OPEN_TIMEOUT_SECONDS) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert scalar(path, "SELECT count(*) FROM runs") == 1
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION


@pytest.mark.parametrize("command", [("list",), ("db", "upgrade")])
def test_upgrade_happens_on_any_command(
    runsup: Runsup, tmp_path: Path, command: tuple[str]
) -> None:
    path = tmp_path / "original.db"
    make_original_database(path)
    before = original_values(path)
    result = runsup(*command, env={"RUNSUP_DATABASE": str(path)})
    assert result.returncode == 0, result.stderr
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION
    assert original_values(path) == before


# An original-schema program in the middle of a write when runsup first opens the file.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute(
    "INSERT INTO runs (id, status, config_json, template, created_at)"
    " VALUES ('b00000000001', 'PENDING', '{}', 'erlang-demo', '2024-06-07 08:09:10.000000')"
)
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("committed", flush=True)
"""


def has_open(pid: int, path: Path) -> bool:
    """True if process `pid` has `path` open (Linux /proc)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if Path(fd.readlink()) == path:
                return True
        except OSError:
            continue
    return False


def test_upgrade_waits_for_a_foreign_writer_instead_of_failing(
    runsup: Runsup, tmp_path: Path, python_worker: Callable[..., PythonWorker]
) -> None:
    path = (tmp_path / "original.db").resolve()
    make_original_database(path)
    before = original_values(path)
    locker = python_worker(LOCKER, str(path))
    assert locker.read_line() == "holding"

    upgrade = subprocess.Popen(
        [str(runsup.command), "db", "upgrade"],
        env={**runsup.env, "RUNSUP_DATABASE": str(path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
        while not has_open(upgrade.pid, path) and upgrade.poll() is None:
            assert time.monotonic() < deadline, "runsup never opened the database"
            time.sleep(0.01)
        # runsup is now at the file (or already gave up, which is the failure checked below).
        locker.send()
        assert locker.read_line() == "committed"
        _out, err = upgrade.communicate(timeout=OPEN_TIMEOUT_SECONDS)
    finally:
        if upgrade.poll() is None:
            upgrade.kill()
            upgrade.wait()

    assert upgrade.returncode == 0, err
    assert "Traceback" not in err
    assert original_values(path)[: len(before)] == before
    assert scalar(path, "SELECT count(*) FROM runs WHERE id = 'b00000000001'") == 1
    assert scalar(path, "SELECT version_num FROM alembic_version") == HEAD_REVISION
    assert scalar(path, "PRAGMA journal_mode") == "wal"
