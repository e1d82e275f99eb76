"""The engine: SQLite in WAL mode, a busy timeout, and write transactions that lock up front."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection

# How long a statement waits for another process's lock before SQLite gives up.
BUSY_TIMEOUT_MS = 30_000
# Execution option that marks a read-only transaction (plain deferred BEGIN).
READ_OPTION = "runsup_read"
# Backoff while another connection keeps the file from switching to WAL.
WAL_RETRY_FIRST_DELAY_SECONDS = 0.005
WAL_RETRY_MAX_DELAY_SECONDS = 0.1


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite: WAL, synchronous=NORMAL, busy_timeout, BEGIN IMMEDIATE."""
    if not url.startswith("sqlite"):
        return create_engine(url)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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
