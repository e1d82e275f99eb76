"""Issue 20's defects against the installed daemon, with real processes and a real database.

Each test here failed on the code before its fix (see each test's docstring)."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import READY, RUNSUP, DaemonHarness

POISON_ID = "bad0000000ff"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


def insert_poison_row(db_path: Path) -> None:
    """A foreign PENDING row whose template is not UTF-8 (bytes cast to TEXT)."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        with conn:
            conn.execute(
                "INSERT INTO runs (id, status, config_json, template, created_at) VALUES"
                " (?, 'PENDING', '{}', CAST(x'ff41' AS TEXT), '2026-01-01 00:00:00')",
                (POISON_ID,),
            )
    finally:
        conn.close()


def test_poison_row_blocks_neither_starts_nor_cancels_nor_list(harness: DaemonHarness) -> None:
    """Defect 6: before the fix every pass failed on the row (loop_error, 1 s back-off): the
    good run never started and `runsup list` failed with a traceback."""
    harness.start()
    insert_poison_row(harness.db_path)
    good = harness.submit({})
    assert harness.wait_final(good).status == "COMPLETED"
    poison = harness.wait_final(POISON_ID)
    assert poison.status == "FAILED"
    assert poison.error_message is not None and "template" in poison.error_message
    long = harness.submit({"sleep": 60, "progress": [READY]})
    harness.wait_set_up(long)
    harness.store.request_cancel(long)
    assert harness.wait_final(long).status == "CANCELLED"
    listed = subprocess.run(
        [str(RUNSUP), "--config", str(harness.config), "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert POISON_ID in listed.stdout and good in listed.stdout
    assert "loop_error" not in harness.log_text()
