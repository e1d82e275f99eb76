"""The engine: SQLite in WAL mode, a busy timeout, and write transactions that lock up front."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError

from supervisor.errors import DatabaseError

# How long a statement waits for another process's lock before SQLite gives up.
BUSY_TIMEOUT_MS = 30_000
# Execution option that marks a read-only transaction (plain deferred BEGIN).
READ_OPTION = "runsup_read"
# Backoff while another connection keeps the file from switching to WAL.
WAL_RETRY_FIRST_DELAY_SECONDS = 0.005
WAL_RETRY_MAX_DELAY_SECONDS = 0.1
# A new database file: SQLite's own default (rw-r--r--, less the umask) ...
NEW_DATABASE_MODE = 0o644
# ... plus group read and write when its folder lets the group create files there.
GROUP_READ_WRITE = stat.S_IRGRP | stat.S_IWGRP


# The oldest SQLite whose SQL the store uses: the queue's index on an expression
# (coalesce(priority, 0)) needs 3.9.0; the partial index of cancel requests 3.8.0, and
# PRAGMA data_version and wal_checkpoint(TRUNCATE) 3.8.8. (No RETURNING, upsert, window
# function or DROP COLUMN: Alembic's batch mode copies the table instead.)
SQLITE_MINIMUM = (3, 9, 0)


def sqlite_version_problem(
    version: tuple[int, int, int] = sqlite3.sqlite_version_info,
) -> str | None:
    """Why this SQLite library cannot hold the store, in one line; None if it can."""
    if tuple(version) >= SQLITE_MINIMUM:
        return None
    found = ".".join(map(str, version))
    need = ".".join(map(str, SQLITE_MINIMUM))
    return (
        f"SQLite {found} is too old: runsup needs {need} or newer (indexes on expressions); "
        "install a newer libsqlite3 or a Python built against one"
    )


def make_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An SQLite engine for `url`: WAL, synchronous=NORMAL, busy_timeout, BEGIN IMMEDIATE."""
    problem = sqlite_version_problem()
    if problem is not None:
        raise DatabaseError(problem)
    # Settings refuse other databases already; a caller passing one gets a line, not a traceback.
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        backend = None
    if backend != "sqlite":
        raise DatabaseError(f"cannot open database {url}: only SQLite URLs are supported")
    path = _sqlite_file(url)
    if path is not None:
        create_database_file(path)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        # Another program may write bytes that are not UTF-8 into a TEXT column; such a value
        # reads with U+FFFD in place of the bad bytes (then fails clearly, e.g. as an unknown
        # template) instead of failing every query that touches its row (issue 20, 6).
        dbapi_connection.text_factory = decode_text
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred transaction that reads and then writes fails at once with
        # SQLITE_BUSY_SNAPSHOT if another process committed in between; taking
        # the write lock up front makes it wait (busy_timeout) instead.
        if conn.get_execution_options().get(READ_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def decode_text(raw: bytes) -> str:
    """A TEXT value as str; bytes that are not UTF-8 become U+FFFD."""
    return raw.decode("utf-8", "replace")


def checkpoint(engine: Engine, busy_timeout_ms: int) -> bool:
    """Fold the -wal file back into the database and truncate it; False if not done now.

    Never waits: TRUNCATE calls the busy handler until every reader has left its old
    snapshot, which with busy_timeout would stall the caller up to BUSY_TIMEOUT_MS per try
    while some program keeps a read transaction open. So this runs with no busy timeout
    (then puts `busy_timeout_ms` back) and reports "not now" instead; the caller tries again.
    """
    if engine.dialect.name != "sqlite":
        return True
    # Outside any transaction: a checkpoint cannot run inside one.
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = cursor.fetchone()
        finally:
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    finally:
        conn.close()
    return row is not None and int(row[0]) == 0


def _enable_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, retried: switching a file to WAL needs it alone, and SQLite
    answers "database is locked" at once (no busy handler) while another connection, such as a
    second process creating the same fresh file, holds it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = WAL_RETRY_FIRST_DELAY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            message = str(exc).lower()
            busy = "locked" in message or "busy" in message
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, WAL_RETRY_MAX_DELAY_SECONDS)


def _sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names; None for in-memory databases and URI filenames."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("uri"):
        return None
    return Path(database)


def create_database_file(path: Path) -> None:
    """Create an empty database file if none exists, with the group access its folder implies.

    SQLite gives -wal and -shm the database file's mode. In a group-writable folder (the
    service's setgid state directory, mode 2770) the group may create, replace and delete
    these files anyway, so the database is made group read-write: a group member's program
    (a GUI) can then read, submit runs and ask for cancels, and the -wal and -shm it may
    create while the daemon is down (group inherited from the setgid folder, mode from the
    database) stay writable for the daemon. Elsewhere the umask alone decides, as SQLite
    would. An existing file is left as it is; errors are left for SQLite to report.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, NEW_DATABASE_MODE)
    except OSError:
        return
    try:
        if os.stat(path.parent).st_mode & stat.S_IWGRP:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | GROUP_READ_WRITE)
    finally:
        os.close(fd)
