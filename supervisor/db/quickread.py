"""Reads for short commands with plain sqlite3, no SQLAlchemy: `runsup metrics` costs what its
start costs, and importing SQLAlchemy was most of that (0.3-0.5 s of CPU, issue 23).

Only a database that is at HEAD_REVISION in WAL mode is read here; anything else (behind,
missing its schema, another journal mode) gets None and the caller opens the Store as before,
so what such a database gets (an upgrade, an error message) stays the Store's one behaviour.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from supervisor.db.stats import RunStats, read_run_stats
from supervisor.errors import DatabaseError

# As supervisor.db.engine's (not imported: it imports SQLAlchemy); a test checks they agree.
BUSY_TIMEOUT_MS = 30_000
HEAD_REVISION = "0007"  # as supervisor.db.migrate's; a test checks they agree


class QuickReader:
    """One sqlite3 connection reading the figures of `runsup metrics` (never writes)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> QuickReader | None:
        """A reader of the database file `path`, or None when the Store must open it."""
        try:
            # mode=rw: never create the file (the caller checked it exists; a race loses nothing).
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=rw",
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
            )
        except sqlite3.Error:
            return None
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error:
            conn.close()
            return None
        if mode != ("wal",) or version != [(HEAD_REVISION,)]:
            conn.close()
            return None
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def run_stats(self, templates: Iterable[str], other: str, now: datetime) -> RunStats:
        """The metrics' figures (supervisor.db.stats), read in one short read transaction."""
        try:
            self.conn.execute("BEGIN")
            try:
                return read_run_stats(self._rows, templates, other, now)
            finally:
                self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot read database {self.path}: {exc}") from None

    def _rows(self, sql: str, params: Mapping[str, object]) -> Sequence[Sequence[Any]]:
        return self.conn.execute(sql, dict(params)).fetchall()
