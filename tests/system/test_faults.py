"""Faults around the installed daemon (issue 6): a locked database, a reader that never lets go,
a read-only, removed or full runs directory, file watching gone. Each time the daemon waits,
retries or fails the affected run with the reason, lives on, and loses no update.

Some tests mount a tmpfs or a bind mount (root only); they are skipped, saying why, where
mounting is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonHarness, wait_for

from supervisor.daemon.outbox import RETRY_INTERVAL_MAX_SECONDS, RETRY_INTERVAL_SECONDS

READY = {"type": "start", "config": {"total_erlangs": 1, "total_iterations": 5}}

# A simulation that waits for a gate file (its first argument), then reports progress and
# exits with its second argument, with an error record when that is not 0.
GATED = """\
printf '%s\\n' '{"type": "start", "config": {"total_erlangs": 1, "total_iterations": 5}}' \\
  >> progress.jsonl
while [ ! -e "$1" ]; do sleep 0.02; done
printf '%s\\n' '{"erlang": 2.5, "iteration": 5}' >> progress.jsonl
if [ "$2" != 0 ]; then
  printf '%s\\n' '{"type": "error", "message": "solver diverged"}' >> progress.jsonl
fi
exit "$2"
"""


def gated_templates(tmp: Path, gate: Path) -> str:
    """Templates gated-ok (exit 0) and gated-fail (exit 3), both waiting for `gate`."""
    script = tmp / "gated.sh"
    script.write_text(GATED)
    out = ""
    for name, code in (("gated-ok", "0"), ("gated-fail", "3")):
        argv = json.dumps(["/bin/sh", str(script), str(gate), code])
        out += f"[templates.{name}]\ncommand = {argv}\n"
    return out


def mount(*args: str) -> None:
    """Run mount(8); skip the test, saying why, if this machine refuses."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} refused here: {done.stderr.strip()}")


def umount(path: Path) -> None:
    """Lazily unmount (never fails the test)."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A daemon harness, not started; torn down at the end."""
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


def no_loop_errors(h: DaemonHarness) -> None:
    """The daemon never failed a whole pass (a crash loop would show here)."""
    log = h.log_text()
    assert "loop_error" not in log, log[-3000:]
    assert h.proc is not None and h.proc.poll() is None, "the daemon died"


# -- the database ----------------------------------------------------------------------------

LOCKER = """\
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""

LOCK_SECONDS = 6.0


def exits_seen(h: DaemonHarness, run_ids: set[str]) -> list[str]:
    """The runs among `run_ids` whose end the daemon has logged (`run_exited`)."""
    return [
        e["run_id"]
        for e in h.log_events()
        if e["event"] == "run_exited" and e.get("run_id") in run_ids
    ]


def test_write_lock_held_for_seconds_loses_no_update(harness: DaemonHarness) -> None:
    gate = harness.tmp / "gate"
    harness.settings["max_concurrent_runs"] = 2
    harness.write_config(gated_templates(harness.tmp, gate))
    harness.start()
    ok = harness.submit({}, template="gated-ok")
    bad = harness.submit({}, template="gated-fail")
    for run_id in (ok, bad):
        wait_for(
            "the gated runs running",
            lambda r=run_id: harness.run(r).total_iterations == 5,  # type: ignore[misc]
        )
    queued = harness.submit({"progress": [{"iteration": 1, "erlang": 1.5}]})
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(harness.db_path), str(LOCK_SECONDS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        # While the lock is held: both runs report progress and end; a slot frees up.
        gate.write_text("")
        # The daemon saw a run end (it logs that before it writes anything about it), so
        # the end is waiting to be written now; the lock holds it back.
        wait_for("a gated run's end seen by the daemon", lambda: exits_seen(harness, {ok, bad}))
        for run_id in (ok, bad):
            assert harness.run(run_id).status == "RUNNING", "nothing can be written under the lock"
        assert locker.stdout.readline().strip() == "released"
    finally:
        locker.wait(30)
    rec_ok = harness.wait_final(ok)
    rec_bad = harness.wait_final(bad)
    assert rec_ok.status == "COMPLETED" and rec_ok.exit_code == 0
    assert rec_ok.current_iteration == 5 and rec_ok.current_erlang == 2.5
    assert rec_bad.status == "FAILED" and rec_bad.exit_code == 3
    assert rec_bad.error_message is not None and "solver diverged" in rec_bad.error_message
    assert rec_bad.current_iteration == 5
    rec_q = harness.wait_final(queued)
    assert rec_q.status == "COMPLETED" and rec_q.current_iteration == 1
    for run_id in (ok, bad, queued):
        history = [e.to_status for e in harness.store.events(run_id)]
        assert history[:2] == ["PENDING", "RUNNING"] and len(history) == 3, history
    # How soon after the lock they settle is a figure: bench/mechanism_speeds.py.
    no_loop_errors(harness)


READER = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM runs").fetchall()
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""

PROGRESSIVE = """\
import json, time
with open("progress.jsonl", "a") as fh:
    for i in range(1, {n} + 1):
        fh.write(json.dumps({{"iteration": i, "total_iterations": {n}}}) + "\\n")
        fh.flush()
        time.sleep(0.004)
"""

WAL_LIMIT = 256 * 1024


def test_long_reader_does_not_stall_writes_and_wal_shrinks_after(harness: DaemonHarness) -> None:
    n = 600
    harness.settings["wal_checkpoint_bytes"] = WAL_LIMIT
    script = harness.tmp / "progressive.py"
    script.write_text(PROGRESSIVE.format(n=n))
    cmd = json.dumps([sys.executable, str(script)])
    harness.write_config(f"[templates.progressive]\ncommand = {cmd}\n")
    harness.start()
    wal = Path(f"{harness.db_path}-wal")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(harness.db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "holding"
        ids = [harness.submit({}, template="progressive") for _ in range(3)]
        # Every run ends, with all of its progress, while the reader still holds its
        # snapshot: the daemon's writes did not wait for it.
        for run_id in ids:
            rec = harness.wait_final(run_id, deadline=60)
            assert rec.status == "COMPLETED" and rec.current_iteration == n
        assert reader.poll() is None, "the reader let go before the runs ended"
        assert wal.stat().st_size > WAL_LIMIT, "the reader should have kept the -wal from reset"
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "released"
    finally:
        with contextlib.suppress(OSError):
            if reader.stdin is not None:
                reader.stdin.close()
        reader.wait(30)
    wait_for("the -wal checkpointed back down", lambda: wal.stat().st_size <= WAL_LIMIT)
    wait_for("wal_checkpointed in the log", lambda: "wal_checkpointed" in harness.log_text())
    no_loop_errors(harness)


# -- the runs directory ------------------------------------------------------------------------


@pytest.mark.tier("mount", "root")
def test_read_only_runs_dir_fails_runs_and_recovers(harness: DaemonHarness) -> None:
    harness.start()
    runs = harness.runs_dir
    # A read-only bind mount over the runs directory (the daemon's lock file stays open on
    # the writable mount below).
    mount("--bind", str(runs), str(runs))
    try:
        mount("-o", "remount,bind,ro", str(runs))
        failed = harness.submit({})
        rec = harness.wait_final(failed)
        assert rec.status == "FAILED"
        assert rec.error_message is not None and "Read-only file system" in rec.error_message
        assert str(runs / failed) in rec.error_message
    finally:
        umount(runs)
    assert harness.wait_final(harness.submit({})).status == "COMPLETED"
    no_loop_errors(harness)


def test_removed_runs_dir_fails_runs_and_recovers(harness: DaemonHarness) -> None:
    harness.start()
    shutil.rmtree(harness.runs_dir)
    failed = harness.submit({})
    rec = harness.wait_final(failed)
    assert rec.status == "FAILED"
    assert rec.error_message is not None and "No such file or directory" in rec.error_message
    harness.runs_dir.mkdir()
    assert harness.wait_final(harness.submit({})).status == "COMPLETED"
    no_loop_errors(harness)


def fill_up(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    # Fill the last partial page too.
    with filler.open("ab", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 512)
    return filler


@pytest.mark.tier("mount", "root")
def test_full_disk_fails_new_runs_keeps_running_ones_and_recovers(
    harness: DaemonHarness,
) -> None:
    runs = harness.runs_dir
    runs.mkdir()
    mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(runs))
    try:
        gate = harness.tmp / "gate"
        harness.start()
        running = harness.submit({"wait_for_file": str(gate), "progress": [READY]})
        wait_for("the run running", lambda: harness.run(running).total_iterations == 5)
        filler = fill_up(runs)
        failed = harness.submit({})
        rec = harness.wait_final(failed)
        assert rec.status == "FAILED"
        assert rec.error_message is not None and "No space left on device" in rec.error_message
        # The running run ends while the disk is still full: its keeper cannot write its
        # record, yet the daemon, its parent, knows how it ended.
        gate.write_text("")
        rec = harness.wait_final(running)
        assert rec.status == "COMPLETED", rec.error_message
        assert rec.exit_code == 0
        filler.unlink()
        again = harness.submit({"progress": [{"iteration": 2}]})
        rec = harness.wait_final(again)
        assert rec.status == "COMPLETED" and rec.current_iteration == 2
        no_loop_errors(harness)
    finally:
        harness.close()
        umount(runs)


# -- file watching -----------------------------------------------------------------------------

APPENDER = """\
i=1
while [ $i -le "${1:-3}" ]; do
  while [ ! -e go$i ]; do sleep 0.02; done
  printf '{"iteration": %d}\\n' $i >> progress.jsonl
  i=$((i+1))
done
"""


def inotify_fds(pid: int) -> int:
    """How many inotify instances the process holds."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if "inotify" in os.readlink(f"/proc/{pid}/fd/{name}"):
                count += 1
    return count


def step_progress(h: DaemonHarness, run_id: str, steps: range, deadline: float) -> None:
    """Open the appender's gates one by one, each once the step before is in the row."""
    run_dir = h.runs_dir / run_id
    for i in steps:
        (run_dir / f"go{i}").write_text("")
        wait_for(
            f"iteration {i} in the row",
            lambda i=i: h.run(run_id).current_iteration == i,  # type: ignore[misc]
            deadline,
        )


def test_forced_polling_still_delivers_progress(harness: DaemonHarness) -> None:
    script = harness.tmp / "appender.sh"
    script.write_text(APPENDER)
    # A rescan once an hour: within the test only the poller can deliver progress.
    harness.settings.update(force_polling=True, poll_delay_ms=100, rescan_interval_seconds=3600)
    harness.write_config(f'[templates.appender]\ncommand = ["/bin/sh", "{script}"]\n')
    harness.start()
    assert harness.proc is not None
    assert inotify_fds(harness.proc.pid) == 0, "force_polling must not use inotify"
    run_id = harness.submit({}, template="appender")
    harness.wait_status(run_id, {"RUNNING"})
    step_progress(harness, run_id, range(1, 4), 10)
    assert harness.wait_final(run_id).status == "COMPLETED"
    no_loop_errors(harness)


def test_dead_watcher_leaves_the_rescan_to_keep_progress_right(harness: DaemonHarness) -> None:
    script = harness.tmp / "appender.sh"
    script.write_text(APPENDER)
    # Another folder beside runs/ and runs.db: the daemon then watches runs/ on its own (in the
    # default layout one watch of their folder sees both and outlives runs/ being replaced).
    (harness.tmp / "elsewhere").mkdir()
    rescan = 0.5
    harness.settings["rescan_interval_seconds"] = rescan
    harness.write_config(f'[templates.appender]\ncommand = ["/bin/sh", "{script}", "5"]\n')
    harness.start()
    run_id = harness.submit({}, template="appender")
    harness.wait_status(run_id, {"RUNNING"})
    step_progress(harness, run_id, range(1, 2), 10)
    # Replace the watched runs directory: the watch on the old one sees nothing any more.
    runs, old = harness.runs_dir, harness.tmp / "runs.old"
    runs.rename(old)
    runs.mkdir()
    (runs / run_id).symlink_to(old / run_id)
    (old / run_id / "poke").write_text("")  # an event on the old watch: the watcher notices
    wait_for("watcher_died in the log", lambda: "watcher_died" in harness.log_text(), 10)
    # Steps 2-4 while the run goes on (step 5 also ends it, and an exit is read at once).
    step_progress(harness, run_id, range(2, 3), 10)
    # In the row while the watcher was still dead (it comes back after RESTART_FIRST_S, twice
    # the rescan interval): only the rescan can have delivered it.
    assert "watcher_restarted" not in harness.log_text(), "the watcher came back first"
    step_progress(harness, run_id, range(3, 6), 10)
    assert harness.wait_final(run_id).status == "COMPLETED"
    assert harness.run(run_id).current_iteration == 5
    # New runs go on in the new directory, their progress from the rescan.
    again = harness.submit({"progress": [{"iteration": 9}]})
    rec = harness.wait_final(again)
    assert rec.status == "COMPLETED" and rec.current_iteration == 9
    no_loop_errors(harness)


FULL_DISK_FAILED_ATTEMPTS = 2
# A timer's slack when the gaps between logged attempts are compared with the backoff.
BACKOFF_SLACK_SECONDS = 0.05
WRITE_FAILURES = ("database_writes_waiting", "database_writes_retry_failed")


def retry_gaps_keep_the_backoff(h: DaemonHarness) -> None:
    """Each retry came no sooner than the outbox's doubling backoff allows: the mechanism
    that keeps a full disk from becoming a hot loop (how many tries a test's wait saw depends
    on the machine's speed, so that is not counted)."""
    waited = [
        (e["attempt"], e["waited_seconds"])
        for e in h.log_events()
        if e["event"] == "database_writes_retry_failed"
    ]
    assert waited, "no retry was logged"
    previous = {1: 0.0, **dict(waited)}
    for attempt, at in waited:
        if attempt - 1 not in previous:
            continue
        backoff = min(RETRY_INTERVAL_SECONDS * 2 ** (attempt - 2), RETRY_INTERVAL_MAX_SECONDS)
        gap = at - previous[attempt - 1]
        assert gap >= backoff - BACKOFF_SLACK_SECONDS, (attempt, gap, backoff)


def failures_after_exit(h: DaemonHarness, run_id: str) -> int:
    """How many write attempts failed since the daemon logged the run's end."""
    events = h.log_events()
    ends = [
        i for i, e in enumerate(events) if e["event"] == "run_exited" and e.get("run_id") == run_id
    ]
    if not ends:
        return 0
    return sum(e["event"] in WRITE_FAILURES for e in events[ends[0] + 1 :])


@pytest.mark.tier("mount", "root")
def test_full_disk_under_the_database_loses_no_update(tmp_path: Path) -> None:
    """The database itself on the full filesystem: nothing can be written, the daemon keeps
    trying, and once space returns the run's end is recorded as it happened."""
    state = tmp_path / "state"
    state.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state))
    h = DaemonHarness(tmp_path)
    try:
        h.db_path = state / "runs.db"
        h.runs_dir = state / "runs"
        h.settings.update(database=str(h.db_path), runs_dir=str(h.runs_dir))
        h.write_config()
        h.store.close()
        h.store = h.store.open(f"sqlite:///{h.db_path}")
        gate = tmp_path / "gate"
        h.start()
        run_id = h.submit({"wait_for_file": str(gate), "progress": [READY]})
        wait_for("the run running", lambda: h.run(run_id).total_iterations == 5)
        filler = fill_up(state)
        gate.write_text("")
        # The run ended and the daemon failed to record it, twice (once, then after its
        # backoff): it keeps trying and lives on.
        wait_for(
            "two failed write attempts after the run's end",
            lambda: failures_after_exit(h, run_id) >= FULL_DISK_FAILED_ATTEMPTS,
        )
        assert h.run(run_id).status == "RUNNING"
        assert h.proc is not None and h.proc.poll() is None, "the daemon died of a full disk"
        filler.unlink()
        rec = h.wait_final(run_id)
        assert rec.status == "COMPLETED" and rec.exit_code == 0
        # It kept trying with a backoff, not in a hot loop, and no pass failed over it.
        assert failures_after_exit(h, run_id) >= FULL_DISK_FAILED_ATTEMPTS
        retry_gaps_keep_the_backoff(h)
        no_loop_errors(h)
        again = h.submit({})
        assert h.wait_final(again).status == "COMPLETED"
        assert h.proc.poll() is None
    finally:
        h.close()
        umount(state)
