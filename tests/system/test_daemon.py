"""The installed `runsup daemon` with real processes and signals: SPEC sections 4, 5 and 6."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import READY, DaemonHarness, group_alive, pid_alive, wait_for

from supervisor.db import utcnow


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A running daemon on a fresh database, torn down with everything it started."""
    harness = DaemonHarness(tmp_path)
    harness.start()
    yield harness
    harness.close()


# -- SPEC section 6, row by row ---------------------------------------------


def test_exit_zero_completes_and_run_dir_is_as_spec_says(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"stdout": "hello from the sim", "progress": [{"erlang": 1.0}]})
    rec = daemon.wait_final(run_id)
    assert rec.status == "COMPLETED"
    assert rec.exit_code == 0 and rec.exit_signal is None
    run_dir = daemon.runs_dir / run_id
    assert rec.run_dir == str(run_dir)
    assert json.loads((run_dir / "config.json").read_text())["stdout"] == "hello from the sim"
    assert "hello from the sim" in (run_dir / "logs" / "sim.log").read_text()
    assert rec.started_at is not None and rec.completed_at is not None
    assert rec.current_erlang == 1.0
    history = [(e.from_status, e.to_status) for e in daemon.store.events(run_id)]
    assert history == [(None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]


def test_simulation_gets_cwd_and_environment(daemon: DaemonHarness) -> None:
    script = (
        'printf "%s|%s|%s|%s|%s|%s" "$PWD" "$RUNSUP_RUN_ID" "$RUNSUP_RUN_DIR" '
        '"$RUNSUP_PROGRESS_FILE" "$PYTHONUNBUFFERED" "${{NOTIFY_SOCKET:-unset}}" > env.txt'
    )
    daemon.stop()
    daemon.settings["max_concurrent_runs"] = 1
    daemon.write_config(f'[templates.envdump]\ncommand = ["/bin/sh", "-c", {json.dumps(script)}]\n')
    daemon.start(env={"NOTIFY_SOCKET": "/nonexistent/notify"})
    run_id = daemon.submit({}, template="envdump")
    assert daemon.wait_final(run_id).status == "COMPLETED"
    run_dir = daemon.runs_dir / run_id
    fields = (run_dir / "env.txt").read_text().split("|")
    assert fields == [
        str(run_dir),
        run_id,
        str(run_dir),
        str(run_dir / "progress.jsonl"),
        "1",
        "unset",
    ]


def test_nonzero_exit_fails_with_code_and_error_record(daemon: DaemonHarness) -> None:
    run_id = daemon.submit(
        {"exit_code": 3, "progress": [{"type": "error", "message": "matrix is singular"}]}
    )
    rec = daemon.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.exit_code == 3 and rec.exit_signal is None
    assert rec.error_message is not None
    assert "code 3" in rec.error_message and "matrix is singular" in rec.error_message


def test_nonzero_exit_without_error_record_quotes_the_log(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"exit_code": 7, "stdout": "disk quota exceeded in solver"})
    rec = daemon.wait_final(run_id)
    assert rec.status == "FAILED" and rec.exit_code == 7
    assert rec.error_message is not None and "disk quota exceeded" in rec.error_message


def test_cancel_request_terminates_group_and_records_cancelled(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"sleep": 60, "children": 2, "progress": [READY]})
    pid, pgid = daemon.wait_set_up(run_id)
    assert pid == pgid
    daemon.store.request_cancel(run_id)
    rec = daemon.wait_final(run_id)
    assert rec.status == "CANCELLED"
    assert rec.exit_signal == signal.SIGTERM
    assert not group_alive(pgid), "children the simulation forked must die with it"


def test_cancel_of_sim_that_exits_by_itself_on_sigterm_keeps_its_code(
    daemon: DaemonHarness,
) -> None:
    run_id = daemon.submit({"sleep": 60, "term_exit_code": 4, "progress": [READY]})
    daemon.wait_set_up(run_id)
    daemon.store.request_cancel(run_id)
    rec = daemon.wait_final(run_id)
    assert rec.status == "CANCELLED"
    assert rec.exit_code == 4


def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"sleep": 60, "ignore_term": True, "progress": [READY]})
    _, pgid = daemon.wait_set_up(run_id)
    asked = time.monotonic()
    daemon.store.request_cancel(run_id)
    rec = daemon.wait_final(run_id)
    waited = time.monotonic() - asked
    assert rec.status == "CANCELLED"
    assert rec.exit_signal == signal.SIGKILL
    assert waited >= daemon.settings["cancel_grace_seconds"] * 0.9, "SIGKILL came before the grace"
    assert not group_alive(pgid)


def test_cancel_via_cli_command(daemon: DaemonHarness) -> None:
    import subprocess

    from daemon_harness import RUNSUP

    run_id = daemon.submit({"sleep": 60, "progress": [READY]})
    daemon.wait_set_up(run_id)
    out = subprocess.run(
        [str(RUNSUP), "--config", str(daemon.config), "cancel", run_id],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cancel requested" in out.stdout
    assert daemon.wait_final(run_id).status == "CANCELLED"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_from_someone_else_is_cancelled(daemon: DaemonHarness, sig: int) -> None:
    run_id = daemon.submit({"sleep": 60, "progress": [READY]})
    _, pgid = daemon.wait_set_up(run_id)
    os.killpg(pgid, sig)
    rec = daemon.wait_final(run_id)
    assert rec.status == "CANCELLED"
    assert rec.exit_signal == sig


def test_sigkill_from_someone_else_fails_naming_oom(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"sleep": 60, "progress": [READY]})
    _, pgid = daemon.wait_set_up(run_id)
    os.killpg(pgid, signal.SIGKILL)
    rec = daemon.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.exit_signal == signal.SIGKILL
    assert rec.error_message is not None and "out-of-memory" in rec.error_message


def test_crash_signal_fails(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"signal_self": int(signal.SIGSEGV)})
    rec = daemon.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.exit_signal == signal.SIGSEGV
    assert rec.error_message is not None and "SIGSEGV" in rec.error_message


def test_timeout_fails_with_reason(tmp_path: Path) -> None:
    harness = DaemonHarness(tmp_path, cancel_grace_seconds=1)
    py = json.dumps(str(Path(os.sys.executable)))
    harness.write_config(
        f'[templates.slow]\ncommand = ["/bin/sleep", "60"]\ntimeout_seconds = 0.5\n# {py}\n'
    )
    harness.start()
    try:
        run_id = harness.submit({}, template="slow")
        rec = harness.wait_final(run_id)
        assert rec.status == "FAILED"
        assert rec.error_message is not None and "timeout" in rec.error_message
        assert rec.timed_out_at is not None
    finally:
        harness.close()


def test_command_that_cannot_start_fails_and_daemon_goes_on(tmp_path: Path) -> None:
    harness = DaemonHarness(tmp_path)
    harness.write_config(
        '[templates.missing]\ncommand = ["/no/such/simulator", "{config_path}"]\n'
        '[templates.notexec]\ncommand = ["{run_dir}/config.json"]\n'
    )
    harness.start()
    try:
        missing = harness.submit({}, template="missing")
        notexec = harness.submit({}, template="notexec")
        for run_id, words in ((missing, "/no/such/simulator"), (notexec, "not executable")):
            rec = harness.wait_final(run_id)
            assert rec.status == "FAILED"
            assert rec.error_message is not None and words in rec.error_message
            assert rec.pid is None
        ok = harness.submit({})
        assert harness.wait_final(ok).status == "COMPLETED"
    finally:
        harness.close()


def test_pending_run_cancelled_without_starting(tmp_path: Path) -> None:
    harness = DaemonHarness(tmp_path, max_concurrent_runs=1)
    harness.start()
    try:
        blocker = harness.submit({"sleep": 60, "progress": [READY]})
        harness.wait_set_up(blocker)
        launches = tmp_path / "launches"
        queued = harness.submit({"launches_file": str(launches)})
        harness.store.request_cancel(queued)
        rec = harness.wait_final(queued)
        assert rec.status == "CANCELLED"
        assert rec.started_at is None and rec.pid is None
        assert not (harness.runs_dir / queued).exists()
        harness.store.request_cancel(blocker)
        harness.wait_final(blocker)
        assert not launches.exists(), "a cancelled PENDING run must never start"
    finally:
        harness.close()


# -- picking up runs ------------------------------------------------------------


def test_foreign_insert_is_picked_up(daemon: DaemonHarness) -> None:
    conn = sqlite3.connect(daemon.db_path, timeout=10)
    with conn:
        conn.execute(
            "INSERT INTO runs (id, status, config_json, template, created_at)"
            " VALUES (?, 'PENDING', ?, 'testsim', ?)",
            (
                "0123456789ab",
                json.dumps({"exit_code": 0}),
                utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"),
            ),
        )
    conn.close()
    assert daemon.wait_final("0123456789ab").status == "COMPLETED"


def test_hostile_rows_fail_with_a_clear_message(daemon: DaemonHarness) -> None:
    conn = sqlite3.connect(daemon.db_path, timeout=10)
    now = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = [
        ("aaaaaaaaaaa1", "[1, 2]", "testsim", "JSON object"),
        ("aaaaaaaaaaa2", "{not json", "testsim", "not valid JSON"),
        ("aaaaaaaaaaa3", "{}", "rm-rf", "unknown template"),
        ("../../etc/xx", "{}", "testsim", "invalid run id"),
    ]
    with conn:
        for run_id, config, template, _ in rows:
            conn.execute(
                "INSERT INTO runs (id, status, config_json, template, created_at)"
                " VALUES (?, 'PENDING', ?, ?, ?)",
                (run_id, config, template, now),
            )
    conn.close()
    for run_id, _, _, words in rows:
        rec = daemon.wait_final(run_id)
        assert rec.status == "FAILED"
        assert rec.error_message is not None and words in rec.error_message
    assert sorted(p.name for p in daemon.runs_dir.iterdir() if not p.name.startswith(".")) == []


def test_concurrency_limit_never_exceeded(tmp_path: Path) -> None:
    limit = 3
    harness = DaemonHarness(tmp_path, max_concurrent_runs=limit)
    harness.start()
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        conn = sqlite3.connect(harness.db_path, timeout=10)
        while not stop.is_set():
            (n,) = conn.execute("SELECT count(*) FROM runs WHERE status='RUNNING'").fetchone()
            seen.append(int(n))
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ids = [harness.submit({"sleep": 0.2 + 0.05 * (i % 4)}) for i in range(12)]
        for run_id in ids:
            assert harness.wait_final(run_id).status == "COMPLETED"
    finally:
        stop.set()
        sampler.join()
        harness.close()
    assert max(seen) == limit, f"expected to reach but never exceed {limit}, saw {max(seen)}"


def test_oldest_pending_first(tmp_path: Path) -> None:
    harness = DaemonHarness(tmp_path, max_concurrent_runs=1)
    ids = [harness.submit({}) for _ in range(5)]
    harness.start()
    try:
        starts = []
        for run_id in ids:
            rec = harness.wait_final(run_id)
            starts.append(rec.started_at)
        assert starts == sorted(starts)
    finally:
        harness.close()


# -- progress ------------------------------------------------------------------


def test_progress_from_typed_and_untyped_records_with_bad_lines(daemon: DaemonHarness) -> None:
    gate = daemon.tmp / "gate"
    lines = [
        {"type": "start", "config": {"total_erlangs": 4, "total_iterations": 10}},
        "this is not json",
        {"type": "erlang_start", "erlang": 300.0, "erlang_index": 1, "total_erlangs": 4},
        {"type": "iteration", "erlang": 300.0, "iteration": "three", "total_iterations": 10},
        [1, 2, 3],
        {"type": "iteration", "erlang": 300.0, "iteration": 3, "total_iterations": 10},
        {"erlang": 350.5, "iteration": 4},
    ]
    run_id = daemon.submit({"progress": lines, "wait_for_file": str(gate)})
    rec = wait_for(
        "progress columns",
        lambda: r if (r := daemon.run(run_id)).current_iteration == 4 else None,
    )
    assert rec.status == "RUNNING"
    assert rec.current_erlang == 350.5
    assert rec.total_erlangs == 4 and rec.total_iterations == 10
    assert rec.progress_bad_lines == 3
    assert rec.progress_updated_at is not None
    gate.write_text("go")
    assert daemon.wait_final(run_id).status == "COMPLETED"


def test_progress_appended_while_running_is_seen(daemon: DaemonHarness) -> None:
    script = daemon.tmp / "appender.sh"
    script.write_text(
        "while [ ! -e go ]; do sleep 0.01; done\n"
        "for i in 1 2 3; do\n"
        '  echo "{\\"iteration\\": $i}" >> progress.jsonl\n'
        "  while [ ! -e ack$i ]; do sleep 0.01; done\n"
        "done\n"
    )
    daemon.stop()
    daemon.write_config(f'[templates.appender]\ncommand = ["/bin/sh", "{script}"]\n')
    daemon.start()
    run_id = daemon.submit({}, template="appender")
    run_dir = daemon.runs_dir / run_id
    daemon.wait_status(run_id, {"RUNNING"})
    (run_dir / "go").write_text("")
    for i in (1, 2, 3):
        wait_for(f"iteration {i}", lambda i=i: daemon.run(run_id).current_iteration == i)
        (run_dir / f"ack{i}").write_text("")
    assert daemon.wait_final(run_id).status == "COMPLETED"


def test_partial_last_line_waits_until_complete(daemon: DaemonHarness) -> None:
    gate = daemon.tmp / "gate"
    run_id = daemon.submit({"wait_for_file": str(gate)})
    daemon.wait_status(run_id, {"RUNNING"})
    progress = daemon.runs_dir / run_id / "progress.jsonl"
    with progress.open("a") as fh:
        fh.write('{"iteration": 1}\n{"iteration": 2')
    wait_for("first line", lambda: daemon.run(run_id).current_iteration == 1)
    assert daemon.run(run_id).progress_bad_lines in (0, None)
    with progress.open("a") as fh:
        fh.write("}\n")
    wait_for("completed line", lambda: daemon.run(run_id).current_iteration == 2)
    gate.write_text("")
    daemon.wait_final(run_id)


# -- the daemon itself -----------------------------------------------------------


def test_second_daemon_on_same_state_refuses(daemon: DaemonHarness) -> None:
    import subprocess

    from daemon_harness import RUNSUP

    out = subprocess.run(
        [str(RUNSUP), "--config", str(daemon.config), "daemon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "already" in out.stderr


def test_sighup_reloads_templates_and_broken_file_is_refused(daemon: DaemonHarness) -> None:
    daemon.write_config('[templates.added]\ncommand = ["/bin/true"]\n')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("config_reloaded", lambda: "config_reloaded" in daemon.log_text())
    run_id = daemon.submit({}, template="added")
    assert daemon.wait_final(run_id).status == "COMPLETED"
    daemon.config.write_text("max_concurrent_runs = -1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("reload_refused", lambda: "reload_refused" in daemon.log_text())
    again = daemon.submit({}, template="added")
    assert daemon.wait_final(again).status == "COMPLETED", "the old configuration stays"


def test_sigterm_with_detach_leaves_runs_running(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"sleep": 60, "progress": [READY]})
    pid, _ = daemon.wait_set_up(run_id)
    assert daemon.stop() == 0
    assert pid_alive(pid)
    assert daemon.run(run_id).status == "RUNNING"
