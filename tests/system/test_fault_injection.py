"""The fault-injection tier (issue 20): the Nth commit fails (busy, I/O error, disk full), and
the database made read-only under the running daemon. Each case ends with the true outcome of
every run and no run started twice.

The commit faults are armed through `supervisor.db.faults` (an environment variable read only
by the daemon started here); the read-only database is real: `chattr +i` on the database and
its WAL (root on a filesystem with attributes; skipped, saying why, elsewhere).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonHarness, wait_for

from supervisor.db.faults import FAIL_COMMIT_VARIABLE

# Commits 1..FAULTY_COMMITS each fail once, in turn: they cover the launch claim, the RUNNING
# write and the final writes of the two runs below.
FAULTY_COMMITS = 4
KINDS = ("busy", "ioerr", "full")


def launches(path: Path) -> int:
    """How many times the test simulation started with this launches file."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def check_two_runs(harness: DaemonHarness, tmp: Path, env: dict[str, str]) -> None:
    """Two runs (exit 0 and exit 3) queued before the daemon starts: both end with their true
    outcome, each started exactly once."""
    marks = {name: tmp / f"{name}.launches" for name in ("ok", "bad")}
    ok = harness.submit({"launches_file": str(marks["ok"])})
    bad = harness.submit({"launches_file": str(marks["bad"]), "exit_code": 3})
    harness.start(env=env)
    done_ok, done_bad = harness.wait_final(ok), harness.wait_final(bad)
    assert done_ok.status == "COMPLETED", done_ok
    assert done_bad.status == "FAILED" and done_bad.exit_code == 3, done_bad
    assert launches(marks["ok"]) == 1 and launches(marks["bad"]) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_nth_commit_fails(tmp_path: Path, kind: str) -> None:
    for number in range(1, FAULTY_COMMITS + 1):
        tmp = tmp_path / f"commit{number}"
        tmp.mkdir()
        harness = DaemonHarness(tmp, max_concurrent_runs=2)
        try:
            check_two_runs(harness, tmp, {FAIL_COMMIT_VARIABLE: f"{number}:{kind}"})
            assert f'"commit": {number}' in harness.log_text(), "the fault was not reached"
        finally:
            harness.close()


def immutable(paths: list[Path], on: bool) -> None:
    for path in paths:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path, max_concurrent_runs=1)
    yield h
    h.close()


def test_database_made_read_only_under_the_daemon(harness: DaemonHarness, tmp_path: Path) -> None:
    """The database and its WAL refuse every write while a run ends: its final status waits in
    the daemon and lands once the files are writable again; the run queued behind it then
    starts (once)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    probe = tmp_path / "probe"
    probe.write_text("x")
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i refused here (not root, or no file attributes)")
    immutable([probe], False)
    gate = tmp_path / "gate"
    marks = {name: tmp_path / f"{name}.launches" for name in ("first", "second")}
    harness.start()
    first = harness.submit({"launches_file": str(marks["first"]), "wait_for_file": str(gate)})
    wait_for("the first run started", lambda: launches(marks["first"]) == 1)
    harness.wait_status(first, {"RUNNING"})
    second = harness.submit({"launches_file": str(marks["second"])})
    files = [harness.db_path, Path(f"{harness.db_path}-wal")]
    immutable(files, True)
    try:
        gate.write_text("go")
        harness.wait_logged("database_writes_waiting")
        assert harness.proc is not None and harness.proc.poll() is None
    finally:
        immutable(files, False)
    assert harness.wait_final(first).status == "COMPLETED"
    assert harness.wait_final(second).status == "COMPLETED"
    assert launches(marks["first"]) == 1 and launches(marks["second"]) == 1
