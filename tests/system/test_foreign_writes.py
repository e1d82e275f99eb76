"""A GUI that breaks the contract (SPEC section 3, ../shared/FUSION.md), against the installed
daemon: a final status written over a live run, RUNNING rows the daemon did not start, and a
pid such a row names that now belongs to an unrelated process."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bystander import Bystander
from daemon_harness import READY, DaemonHarness, group_alive, pid_alive, wait_for
from foreign_runs import GuiRun, stamp

from supervisor.db import new_run_id

GUI_FAILED_MESSAGE = "Server restarted while run was active"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path, cancel_grace_seconds=1)
    h.write_config()
    yield h
    h.close()


def gui_marks_failed(h: DaemonHarness, run_id: str) -> None:
    """What FUSION's GUI does at its start to a RUNNING row whose group it cannot signal."""
    with sqlite3.connect(h.db_path, isolation_level=None) as conn:
        conn.execute(
            "UPDATE runs SET status='FAILED', error_message=?, completed_at=? WHERE id=?",
            (GUI_FAILED_MESSAGE, stamp(datetime.now(UTC)), run_id),
        )


def test_a_final_status_written_over_a_live_run_is_corrected(harness: DaemonHarness) -> None:
    harness.start()
    gate = harness.tmp / "gate"
    run_id = harness.submit({"wait_for_file": str(gate), "progress": [READY], "exit_code": 0})
    pid, _ = harness.wait_set_up(run_id)
    gui_marks_failed(harness, run_id)
    assert pid_alive(pid), "the run goes on: the daemon supervises it still"
    gate.write_text("")
    rec = wait_for(
        "the true outcome written over the GUI's",
        lambda: r if (r := harness.run(run_id)).status == "COMPLETED" else None,
    )
    assert rec.exit_code == 0 and rec.error_message is None
    # Written over the GUI's FAILED as a correction, which the daemon says.
    harness.wait_logged("run_outcome_corrected", run_id=run_id, was="FAILED", now="COMPLETED")
    reasons = [e.reason or "" for e in harness.store.events(run_id)]
    assert any("another program had written FAILED" in r for r in reasons), reasons


def test_a_final_status_written_while_the_daemon_was_down_is_corrected(
    harness: DaemonHarness,
) -> None:
    harness.start()
    gate = harness.tmp / "gate"
    run_id = harness.submit({"wait_for_file": str(gate), "progress": [READY], "exit_code": 3})
    harness.wait_set_up(run_id)
    harness.kill()
    gui_marks_failed(harness, run_id)
    harness.start()
    harness.wait_logged("run_adopted", run_id=run_id)
    gate.write_text("")
    rec = wait_for(
        "the true outcome after the restart",
        lambda: r if (r := harness.run(run_id)).exit_code == 3 else None,
    )
    assert rec.status == "FAILED" and rec.error_message and "code 3" in rec.error_message


def test_a_run_the_gui_started_is_watched_and_settled(harness: DaemonHarness) -> None:
    harness.start()
    gate = harness.tmp / "gate"
    complete = {"type": "complete", "exit_code": 0}
    gui = GuiRun(
        harness,
        {"wait_for_file": str(gate), "progress": [READY], "progress_after": [complete]},
    )
    try:
        harness.wait_logged("foreign_run_adopted", run_id=gui.run_id)
        assert harness.run(gui.run_id).status == "RUNNING", "never failed while it lives"
        wait_for("its progress read", lambda: harness.run(gui.run_id).total_iterations == 3)
        gate.write_text("")
        rec = harness.wait_final(gui.run_id)
        assert rec.status == "COMPLETED"
    finally:
        gui.close()


def test_a_run_the_gui_started_is_cancelled_with_escalation(harness: DaemonHarness) -> None:
    harness.start()
    gui = GuiRun(harness, {"ignore_term": True, "sleep": 60, "progress": [READY]})
    try:
        harness.wait_logged("foreign_run_adopted", run_id=gui.run_id)
        wait_for("its handlers set", lambda: harness.run(gui.run_id).total_iterations == 3)
        harness.store.request_cancel(gui.run_id)
        rec = harness.wait_final(gui.run_id)
        assert rec.status == "CANCELLED"
        assert gui.proc.wait(10) == -signal.SIGKILL, "SIGTERM ignored, then SIGKILL"
    finally:
        gui.close()


def test_a_gui_run_that_ended_unseen_fails_with_unknown_status(harness: DaemonHarness) -> None:
    gui = GuiRun(harness, {"progress": [READY], "exit_code": 0})
    gui.proc.wait(10)  # it ended without writing `complete`
    harness.start()
    rec = harness.wait_final(gui.run_id)
    assert rec.status == "FAILED"
    assert rec.error_message and "started by another program" in rec.error_message


def test_a_reused_pid_is_never_signalled(harness: DaemonHarness) -> None:
    """The row names a pid that now belongs to a process born after the run started."""
    bystander = Bystander(harness.tmp / "signals")
    try:
        run_id = new_run_id()
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        with sqlite3.connect(harness.db_path, isolation_level=None) as conn:
            conn.execute(
                "INSERT INTO runs (id, status, config_json, template, created_at, started_at,"
                " pid, pgid, cancel_requested_at) VALUES (?, 'RUNNING', '{}', 'testsim', ?, ?,"
                " ?, ?, ?)",
                (
                    run_id,
                    stamp(long_ago),
                    stamp(long_ago),
                    bystander.pid,
                    bystander.pid,
                    stamp(long_ago),
                ),
            )
        harness.start()
        rec = harness.wait_final(run_id)
        assert rec.status in ("FAILED", "CANCELLED")
        # The row is final, so the daemon has decided: what it sent has arrived by now.
        assert bystander.signals() == [], "an unrelated process was signalled"
    finally:
        bystander.close()


def _adoptions(h: DaemonHarness, run_id: str) -> int:
    return sum(
        e["event"] == "foreign_run_adopted" and e.get("run_id") == run_id for e in h.log_events()
    )


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_run_the_gui_started_is_adopted_again_after_a_restart(
    harness: DaemonHarness, how: str
) -> None:
    harness.start()
    gate = harness.tmp / "gate"
    complete = {"type": "complete", "exit_code": 0}
    gui = GuiRun(
        harness,
        {"wait_for_file": str(gate), "progress": [READY], "progress_after": [complete]},
    )
    try:
        wait_for("its adoption", lambda: _adoptions(harness, gui.run_id) == 1)
        if how == "stopped":
            assert harness.stop() == 0  # on_stop = "detach": the GUI's run is left alone
        else:
            harness.kill()
        harness.start()
        wait_for("its adoption by the new daemon", lambda: _adoptions(harness, gui.run_id) == 2)
        # The GUI's own process, never restarted by the daemon: it goes on to the gate.
        assert harness.run(gui.run_id).pid == gui.proc.pid
        gate.write_text("")
        rec = harness.wait_final(gui.run_id)
        assert rec.status == "COMPLETED", rec.error_message
        assert gui.proc.wait(10) == 0
    finally:
        gui.close()


def test_a_gui_killpg_while_the_daemon_is_down_is_recorded_at_its_return(
    harness: DaemonHarness,
) -> None:
    """The first step of FUSION's delete, SIGTERM to the run's group, while no daemon runs:
    the run's keeper keeps the true end, which the next daemon records."""
    harness.start()
    run_id = harness.submit({"sleep": 300, "progress": [READY]})
    _, pgid = harness.wait_set_up(run_id)
    harness.kill()
    os.killpg(pgid, signal.SIGTERM)
    wait_for("the run's group gone", lambda: not group_alive(pgid))
    harness.start()
    rec = harness.wait_final(run_id)
    assert (rec.status, rec.exit_signal) == ("CANCELLED", signal.SIGTERM), rec.error_message
    assert "another process" in (rec.error_message or "")
