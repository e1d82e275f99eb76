"""Commit faults for the fault-injection tests (issue 20): inert unless a test arms them.

`RUNSUP_TEST_FAIL_COMMIT="N:KIND"` makes the store's Nth write transaction (counted from 1 in
this process) fail just before its commit, with what SQLite itself raises for KIND: `busy`
("database is locked": the store retries it as any lock), `ioerr` ("disk I/O error") or `full`
("database or disk is full"). The transaction's work is done and rolled back, as SQLite does
when the commit fails.
"""

from __future__ import annotations

import os
import sqlite3

import structlog
from sqlalchemy.exc import OperationalError

log = structlog.get_logger(__name__)

FAIL_COMMIT_VARIABLE = "RUNSUP_TEST_FAIL_COMMIT"
# SQLite's own messages for each kind of fault.
FAULT_MESSAGES = {
    "busy": "database is locked",
    "ioerr": "disk I/O error",
    "full": "database or disk is full",
}


class CommitFaults:
    """Counts write transactions; raises at the armed one."""

    def __init__(self) -> None:
        self.count = 0
        self.armed: tuple[int, str] | None = None
        raw = os.environ.get(FAIL_COMMIT_VARIABLE)
        if raw:
            number, _, kind = raw.partition(":")
            if kind not in FAULT_MESSAGES or not number.isdigit():
                raise ValueError(f"{FAIL_COMMIT_VARIABLE}={raw!r}: want N:busy|ioerr|full")
            self.armed = (int(number), kind)

    def before_commit(self) -> None:
        """Called inside each write transaction, after its work: fail if this one is armed."""
        if self.armed is None:
            return
        self.count += 1
        number, kind = self.armed
        if self.count == number:
            log.warning("test_commit_fault", commit=number, kind=kind)
            raise OperationalError("COMMIT", None, sqlite3.OperationalError(FAULT_MESSAGES[kind]))
