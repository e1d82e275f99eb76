"""A read-only look at a database file for `runsup check`: never creates, locks or upgrades.

Uses the standard library's sqlite3 (no engine, no WAL switch, no migration). A missing file
is reported, not created. A read-only connection to a WAL database would still create its
-wal and -shm files (with this user's owner and mode, which may lock the service out), so
when they do not exist (nobody has it open; everything is in the main file) the file is read
as `immutable`, which creates nothing; when they do, as a plain read-only reader.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# A read must not wait long for a writer: check answers in about a second.
PROBE_BUSY_TIMEOUT_SECONDS = 1.0
# The file header: its magic string, and the byte that reads 2 in WAL mode, 1 otherwise.
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
WRITE_VERSION_OFFSET = 18
WAL_WRITE_VERSION = 2


@dataclass(frozen=True)
class DatabaseProbe:
    """What a database file is: absent, unreadable (error), or its journal mode and schema."""

    exists: bool
    error: str | None = None
    journal_mode: str | None = None
    revision: str | None = None  # alembic_version; None when no runsup ever migrated it
    has_runs_table: bool = False
    empty: bool = False  # a zero-byte file: nothing set up yet


def probe_database(path: Path) -> DatabaseProbe:
    """Open `path` read-only and read its journal mode and schema revision."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return DatabaseProbe(exists=False)
    except OSError as exc:
        return DatabaseProbe(exists=True, error=f"cannot stat it: {exc.strerror}")
    if size == 0:
        return DatabaseProbe(exists=True, empty=True)
    try:
        with path.open("rb") as fh:
            header = fh.read(HEADER_BYTES)
    except OSError as exc:
        return DatabaseProbe(exists=True, error=f"cannot read it: {exc.strerror}")
    if not header.startswith(SQLITE_MAGIC):
        return DatabaseProbe(exists=True, error="not an SQLite database")
    wal = len(header) > WRITE_VERSION_OFFSET and header[WRITE_VERSION_OFFSET] == WAL_WRITE_VERSION
    shared = Path(f"{path}-shm").exists() or Path(f"{path}-wal").exists()
    uri = f"file:{quote(str(path))}?mode=ro" + ("" if shared else "&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=PROBE_BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as exc:
        return DatabaseProbe(exists=True, error=f"cannot open it: {exc}")
    try:
        mode = "wal" if wal else str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        revision = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = None if row is None else str(row[0])
    except sqlite3.Error as exc:
        return DatabaseProbe(exists=True, error=f"cannot read it: {exc}")
    finally:
        conn.close()
    return DatabaseProbe(
        exists=True, journal_mode=mode, revision=revision, has_runs_table="runs" in tables
    )
