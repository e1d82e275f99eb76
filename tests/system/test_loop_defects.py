"""Issue 11's defects of the loop, each against the installed daemon with real processes.

Each test here failed on the loop before its fix (run against commit 4991f44):
1. a claim found after a restart while the database is locked is neither dropped nor
   doubled by a second launch;
2. a cancel shortly before the timeout ends CANCELLED;
3. a run that ended while the daemon was away is settled with its final progress, read on
   from the saved offset;
4. while another program holds the write lock, the daemon keeps pinging systemd's watchdog,
   escalates a cancel to SIGKILL, and says so in STATUS=.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import READY, TEST_SIM, DaemonHarness, pid_alive, wait_for
from notify_harness import Notification, NotifiedDaemon, NotifySocket

from supervisor.daemon import CRASH_POINT_VARIABLE

LOCKER = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""
WATCHDOG_USEC = 400_000  # the daemon pings every 0.2 s
PINGS_UNDER_LOCK = 5  # a second's worth: the loop is not stuck behind the lock


class Locker:
    """Another program holding the database's write lock until told to let go."""

    def __init__(self, db_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


def launches(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_claim_found_after_restart_under_a_locked_database(harness: DaemonHarness) -> None:
    """Defect 1: the started run stays the daemon's (and holds its slot) until RUNNING lands."""
    harness.settings["max_concurrent_runs"] = 1
    harness.write_config()
    gate, marks = harness.tmp / "gate", harness.tmp / "launches"
    first = harness.submit({"wait_for_file": str(gate), "launches_file": str(marks)})
    # The first run waits for the gate: opened on the way out whatever happens, or a run the
    # harness cannot see (PENDING, spawned) would wait for ever.
    try:
        harness.start(env={CRASH_POINT_VARIABLE: "launch_spawned"}, wait_ready=False)
        assert harness.wait_exit() == -signal.SIGKILL
        wait_for("the first run's process", lambda: launches(marks) == 1)
        second = harness.submit({"launches_file": str(marks)})
        locker = Locker(harness.db_path)
        try:
            harness.start()
            harness.wait_logged("database_writes_waiting")
            assert harness.run(first).status == "PENDING"  # nothing could be written
            locker.release()
        finally:
            locker.close()
        rec = harness.wait_status(first, {"RUNNING"})
        assert rec.pid is not None and pid_alive(rec.pid)
        # A full pass of the loop after the release: it cancels a PENDING run, then takes work.
        probe = harness.submit({})
        harness.store.request_cancel(probe)
        harness.wait_status(probe, {"CANCELLED"})
        assert harness.run(second).status == "PENDING", "the recovered run's slot was given away"
        gate.write_text("")
        assert harness.wait_final(first).status == "COMPLETED"
        assert harness.wait_final(second).status == "COMPLETED"
        assert launches(marks) == 2, "each run started exactly once"
    finally:
        gate.write_text("")


def test_cancel_shortly_before_the_timeout_ends_cancelled(harness: DaemonHarness) -> None:
    """Defect 2: the cancel came first; the timeout passing during its grace changes nothing."""
    harness.settings["cancel_grace_seconds"] = 6
    command = json.dumps([sys.executable, str(TEST_SIM), "{config_path}"])
    harness.write_config(f"[templates.limited]\ncommand = {command}\ntimeout_seconds = 4\n")
    harness.start()
    run_id = harness.submit(
        {"ignore_term": True, "sleep": 60, "progress": [READY]}, template="limited"
    )
    harness.wait_set_up(run_id)
    harness.store.request_cancel(run_id)
    first = harness.wait_logged("run_terminating", run_id=run_id)
    assert first["why"] == "cancel requested", f"the timeout fired first: {first}"
    rec = harness.wait_final(run_id, deadline=30)
    assert rec.status == "CANCELLED", rec.error_message
    assert rec.exit_signal == signal.SIGKILL
    assert rec.timed_out_at is None


def test_run_ended_while_away_is_settled_with_its_final_progress(
    harness: DaemonHarness,
) -> None:
    """Defect 3: the progress written while no daemon watched lands, read from the offset."""
    harness.write_config()
    harness.start()
    gate = harness.tmp / "gate"
    run_id = harness.submit(
        {
            "progress": [READY, "not json", {"iteration": 1, "erlang": 1.0}],
            "wait_for_file": str(gate),
            "progress_after": [{"iteration": 3, "erlang": 2.0}, "garbage again"],
        }
    )
    wait_for(
        "the first progress in the row",
        lambda: (r := harness.run(run_id)).current_iteration == 1 and r.progress_bad_lines == 1,
    )
    harness.kill()
    gate.write_text("")
    exit_file = harness.runs_dir / run_id / ".runsup" / "exit"
    wait_for("the run's end, recorded by its keeper", exit_file.exists)
    harness.start()
    rec = harness.wait_final(run_id)
    assert rec.status == "COMPLETED"
    assert (rec.current_iteration, rec.current_erlang) == (3, 2.0), "stale progress"
    # Read on from the saved offset: the first bad line is not counted twice.
    assert rec.progress_bad_lines == 2


def test_locked_database_neither_stalls_the_watchdog_nor_escalation(
    harness: DaemonHarness, tmp_path: Path
) -> None:
    """Defect 4: pings, SIGKILL escalation and STATUS= go on while another program holds the
    write lock for longer than systemd's watchdog would wait."""
    harness.settings["cancel_grace_seconds"] = 1
    harness.write_config()
    sock = NotifySocket(tmp_path / "notify.sock")
    daemon = NotifiedDaemon(harness)
    locker: Locker | None = None
    try:
        daemon.start({"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        sock.wait_for("READY=1", lambda n: n.has("READY"))
        run_id = harness.submit({"ignore_term": True, "sleep": 60, "progress": [READY]})
        pid, _ = harness.wait_set_up(run_id)
        harness.store.request_cancel(run_id)
        locker = Locker(harness.db_path)
        # Under the lock: the TERM-ignoring run is SIGKILLed after its 1 s grace ...
        wait_for("the run killed after its grace", lambda: not pid_alive(pid))
        # ... the end waits to be written, and systemd hears about it ...
        sock.wait_for("STATUS= saying writes wait", _says_locked)
        assert harness.run(run_id).status == "RUNNING"
        # ... and the watchdog keeps being fed.
        pings: list[Notification] = []
        while len(pings) < PINGS_UNDER_LOCK:
            pings.append(sock.wait_for("WATCHDOG=1", lambda n: n.has("WATCHDOG"), deadline=2))
        assert locker.proc.poll() is None, "the lock was held throughout"
        locker.release()
        rec = harness.wait_final(run_id)
        assert rec.status == "CANCELLED" and rec.exit_signal == signal.SIGKILL
    finally:
        if locker is not None:
            locker.close()
        sock.close()


def _says_locked(note: Notification) -> bool:
    return "database locked" in (note.get("STATUS") or "")
