"""The engine: SQLite in WAL mode, a busy timeout, and write transactions that lock up front."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection

# How long a statement waits for another process's lock before SQLite gives up.
BUSY_TIMEOUT_MS = 30_000
# Execution option that marks a read-only transaction (plain deferred BEGIN).
READ_OPTION = "runsup_read"


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite, WAL + synchronous=NORMAL + busy_timeout + BEGIN IMMEDIATE."""
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
            cursor.execute("PRAGMA journal_mode=WAL")
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
