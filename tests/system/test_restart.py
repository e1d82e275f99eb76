"""Restart safety (issue 4): stop, kill or restart the real daemon and lose no run.

Fault injection uses the daemon's crash points (RUNSUP_TEST_CRASH_POINT), which SIGKILL
the daemon at a named moment of a run's life and do nothing unless armed.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from bystander import Bystander
from daemon_harness import READY, DaemonHarness, group_alive, pid_alive, wait_for

from supervisor.daemon import CRASH_POINT_VARIABLE
from supervisor.db import utcnow
from supervisor.executors.base import ProcessRecord
from supervisor.executors.local.identity import current_boot_id, identify


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A daemon harness not yet started."""
    h = DaemonHarness(tmp_path, cancel_grace_seconds=1)
    yield h
    h.close()


def launches(path: Path) -> int:
    """How many times the test simulation started (one line per launch)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def history(h: DaemonHarness, run_id: str) -> list[tuple[str | None, str]]:
    """The run's status changes, oldest first."""
    return [(e.from_status, e.to_status) for e in h.store.events(run_id)]


def test_detached_runs_survive_restart_and_keep_reporting(harness: DaemonHarness) -> None:
    marks = harness.tmp / "launches"
    gate = harness.tmp / "gate"
    run_id = harness.submit(
        {"launches_file": str(marks), "wait_for_file": str(gate), "progress": [READY]}
    )
    harness.start()
    pid, _ = harness.wait_set_up(run_id)
    assert harness.stop() == 0
    assert pid_alive(pid), "on_stop=detach must leave the run running"
    harness.start()
    wait_for("run_adopted", lambda: "run_adopted" in harness.log_text())
    progress = harness.runs_dir / run_id / "progress.jsonl"
    with progress.open("a") as fh:
        fh.write('{"iteration": 2}\n')
    wait_for("progress after re-adoption", lambda: harness.run(run_id).current_iteration == 2)
    gate.write_text("")
    rec = harness.wait_final(run_id)
    assert rec.status == "COMPLETED" and rec.exit_code == 0
    assert rec.pid == pid
    assert launches(marks) == 1
    assert history(harness, run_id) == [
        (None, "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]


def test_exit_code_while_daemon_is_dead_is_the_true_one(harness: DaemonHarness) -> None:
    gate = harness.tmp / "gate"
    run_id = harness.submit({"wait_for_file": str(gate), "exit_code": 5, "progress": [READY]})
    harness.start()
    pid, _ = harness.wait_set_up(run_id)
    harness.kill()
    gate.write_text("")
    wait_for("the simulation to end", lambda: not pid_alive(pid))
    assert harness.run(run_id).status == "RUNNING"
    harness.start()
    rec = harness.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.exit_code == 5 and rec.exit_signal is None
    assert rec.error_message is not None and "code 5" in rec.error_message
    assert history(harness, run_id)[-1] == ("RUNNING", "FAILED")


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGTERM, "CANCELLED"), (signal.SIGKILL, "FAILED")],
)
def test_signal_while_daemon_is_dead_is_recorded_truthfully(
    harness: DaemonHarness, sig: int, status: str
) -> None:
    run_id = harness.submit({"sleep": 120, "progress": [READY]})
    harness.start()
    pid, pgid = harness.wait_set_up(run_id)
    harness.kill()
    os.killpg(pgid, sig)
    wait_for("the simulation to end", lambda: not pid_alive(pid))
    harness.start()
    rec = harness.wait_final(run_id)
    assert rec.status == status
    assert rec.exit_signal == sig


@pytest.mark.parametrize(
    ("point", "config", "cancel", "status", "exit_code", "exit_signal"),
    [
        ("launch_claimed", {}, False, "COMPLETED", 0, None),
        ("launch_spawned", {"exit_code": 0}, False, "COMPLETED", 0, None),
        ("run_exited", {"exit_code": 5}, False, "FAILED", 5, None),
        ("cancel_term_sent", {"sleep": 120}, True, "CANCELLED", None, signal.SIGTERM),
        (
            "cancel_escalating",
            {"sleep": 120, "ignore_term": True},
            True,
            "CANCELLED",
            None,
            signal.SIGKILL,
        ),
    ],
)
def test_daemon_killed_at_each_point_of_a_run_life(
    harness: DaemonHarness,
    point: str,
    config: dict[str, object],
    cancel: bool,
    status: str,
    exit_code: int | None,
    exit_signal: int | None,
) -> None:
    marks = harness.tmp / "launches"
    run_id = harness.submit({"launches_file": str(marks), "progress": [READY], **config})
    harness.start(env={CRASH_POINT_VARIABLE: point}, wait_ready=False)
    if cancel:
        harness.wait_set_up(run_id)
        harness.store.request_cancel(run_id)
    assert harness.wait_exit() == -signal.SIGKILL, "the armed crash point must kill the daemon"
    assert f'"point": "{point}"' in harness.log_text()
    harness.start()
    rec = harness.wait_final(run_id)
    assert (rec.status, rec.exit_code, rec.exit_signal) == (status, exit_code, exit_signal)
    assert launches(marks) == 1, "a run must never be started twice"
    events = history(harness, run_id)
    assert events[0] == (None, "PENDING")
    assert events[-1][1] == status
    assert [to for _, to in events].count(status) == 1, "a run ends exactly once"
    assert "RUNNING" in [to for _, to in events]
    if rec.pgid:
        assert not group_alive(rec.pgid)


def test_run_from_an_earlier_boot_fails_saying_the_machine_restarted(
    harness: DaemonHarness,
) -> None:
    sleeper = Bystander(harness.tmp / "signals")
    try:
        ident = identify(sleeper.pid)
        assert ident is not None
        old_boot = "00000000-0000-0000-0000-000000000000"
        assert old_boot != current_boot_id()
        run_id = harness.submit({})
        _force_running(harness, run_id, pid=sleeper.pid, ticks=ident.start_ticks, boot=old_boot)
        harness.store.request_cancel(run_id)
        harness.start()
        rec = harness.wait_final(run_id)
        assert rec.status == "FAILED"
        assert rec.error_message is not None and "machine restarted" in rec.error_message
        # The daemon has decided (the row is final): whatever it sent has arrived by now.
        assert sleeper.signals() == [], "a process from this boot with that pid was signalled"
    finally:
        sleeper.close()


def test_a_reused_pid_is_never_mistaken_for_the_run(harness: DaemonHarness) -> None:
    sleeper = Bystander(harness.tmp / "signals")
    try:
        ident = identify(sleeper.pid)
        assert ident is not None
        run_id = harness.submit({})
        # Same pid and boot, another start time: the pid was reused by an unrelated process.
        _force_running(
            harness, run_id, pid=sleeper.pid, ticks=ident.start_ticks - 1, boot=ident.boot_id
        )
        harness.store.request_cancel(run_id)
        harness.start()
        rec = harness.wait_final(run_id)
        assert rec.status == "FAILED"
        assert sleeper.signals() == [], "the unrelated process must not be signalled"
    finally:
        sleeper.close()


def test_killed_keeper_loses_status_but_not_the_run_row(harness: DaemonHarness) -> None:
    run_id = harness.submit({"sleep": 120, "progress": [READY]})
    harness.start()
    _, pgid = harness.wait_set_up(run_id)
    rec = harness.run(run_id)
    assert rec.keeper_pid is not None
    os.kill(rec.keeper_pid, signal.SIGKILL)
    final = harness.wait_final(run_id)
    assert final.status == "FAILED"
    assert final.error_message is not None and "unknown" in final.error_message
    wait_for("the orphaned group to be stopped", lambda: not group_alive(pgid))


def test_on_stop_cancel_cancels_every_run_before_exiting(tmp_path: Path) -> None:
    h = DaemonHarness(tmp_path, on_stop="cancel", cancel_grace_seconds=1)
    try:
        ids = [
            h.submit({"sleep": 120, "progress": [READY]}),
            h.submit({"sleep": 120, "ignore_term": True, "progress": [READY]}),
        ]
        h.start()
        groups = [h.wait_set_up(run_id)[1] for run_id in ids]
        assert h.stop() == 0
        # Recorded before the daemon exited: no waiting here.
        recs = [h.run(run_id) for run_id in ids]
        assert [r.status for r in recs] == ["CANCELLED", "CANCELLED"]
        assert [r.exit_signal for r in recs] == [signal.SIGTERM, signal.SIGKILL]
        assert not any(group_alive(g) for g in groups)
    finally:
        h.close()


def test_restart_does_not_start_pending_runs_twice(harness: DaemonHarness) -> None:
    marks = harness.tmp / "launches"
    harness.settings["max_concurrent_runs"] = 2
    harness.write_config()
    ids = [harness.submit({"launches_file": str(marks), "sleep": 0.3}) for _ in range(8)]
    harness.start()
    wait_for("some runs to finish", lambda: any(harness.run(i).is_final for i in ids))
    harness.kill()
    harness.start()
    for run_id in ids:
        assert harness.wait_final(run_id).status == "COMPLETED"
    assert launches(marks) == len(ids)


def _force_running(h: DaemonHarness, run_id: str, *, pid: int, ticks: int, boot: str) -> None:
    """Make a row look like a run an earlier daemon started (as a crash would leave it)."""
    run_dir = h.runs_dir / run_id
    (run_dir / ".runsup").mkdir(parents=True)
    assert h.store.claim_launch(run_id)
    process = ProcessRecord(
        pid=pid, pgid=pid, start_ticks=ticks, boot_id=boot, keeper_pid=pid, keeper_start_ticks=ticks
    )
    assert h.store.mark_running(run_id, process, run_dir=str(run_dir))
    assert json.loads(h.run(run_id).config_json) == {}
    assert h.run(run_id).started_at is not None and h.run(run_id).started_at <= utcnow()
