"""Issue 20's defects against the installed daemon, with real processes and a real database.

Each test here failed on the code before its fix (see each test's docstring)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import (
    DEFAULT_DEADLINE,
    READY,
    RUNSUP,
    DaemonHarness,
    group_alive,
    wait_for,
)

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


LOCKER = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class Locker:
    """Another program holding the database's write lock until told to let go."""

    def __init__(self, db_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(DEFAULT_DEADLINE)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_stop_with_cancel_under_a_lock_and_a_deleted_row_cancels_every_run(
    tmp_path: Path,
) -> None:
    """Defect 7: before the fix the first synchronous cancel write raised (database locked,
    or the deleted row not found): no run got its SIGTERM and the daemon never exited."""
    harness = DaemonHarness(tmp_path, on_stop="cancel")
    locker: Locker | None = None
    try:
        harness.start()
        ids = [harness.submit({"sleep": 120, "progress": [READY]}) for _ in range(3)]
        groups = {run_id: harness.wait_set_up(run_id)[1] for run_id in ids}
        gone = ids[0]
        conn = sqlite3.connect(harness.db_path, timeout=30)
        with conn:
            conn.execute("DELETE FROM run_events WHERE run_id = ?", (gone,))
            conn.execute("DELETE FROM runs WHERE id = ?", (gone,))
        conn.close()
        locker = Locker(harness.db_path)
        assert harness.proc is not None
        harness.proc.send_signal(signal.SIGTERM)
        wait_for("every run's group gone", lambda: not any(map(group_alive, groups.values())))
        locker.release()
        assert harness.wait_exit() == 0
        for run_id in ids[1:]:
            assert harness.wait_final(run_id).status == "CANCELLED"
    finally:
        if locker is not None:
            locker.close()
        harness.close()


def cpus_allowed(pid: int) -> str:
    """The CPUs a process may run on, as /proc says (e.g. "0" or "0-1")."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_pinned_cpus_survive_a_restart(harness: DaemonHarness) -> None:
    """Defect 11: a run adopted after a restart keeps its CPU, and the next run is pinned to
    another one. Before the fix the restarted daemon forgot the adopted run's CPU and pinned
    the new run onto the same one."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    harness.settings["max_concurrent_runs"] = 2
    harness.write_config(f"[resources]\npin_cpus = true\ncpus = {len(cpus)}\n")
    harness.start()
    first = harness.submit({"sleep": 60, "progress": [READY]})
    first_pid, _ = harness.wait_set_up(first)
    first_cpu = cpus_allowed(first_pid)
    assert first_cpu in {str(c) for c in cpus}
    harness.kill()
    harness.start()
    second = harness.submit({"sleep": 60, "progress": [READY]})
    second_pid, _ = harness.wait_set_up(second)
    assert cpus_allowed(first_pid) == first_cpu
    assert cpus_allowed(second_pid) != first_cpu
    assert cpus_allowed(second_pid) in {str(c) for c in cpus}
