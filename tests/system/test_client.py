"""The Python client (SPEC section 16) against the installed daemon and a real SQLite WAL file:
handles that outlive their process, wait() after the final commit, only SPEC section 3's
writes, no daemon needed, and another program writing to the database meanwhile."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import PythonWorker
from daemon_harness import TEST_SIM, DaemonHarness, wait_for

from supervisor.client import (
    Client,
    NoDaemonWarning,
    ResultsError,
    ResultsWarning,
    RunFailed,
    WaitTimeout,
)
from supervisor.db import new_run_id
from supervisor.db.schema import TIMESTAMP_FORMAT
from supervisor.errors import NotFoundError

DEADLINE = 120.0
SWEEP_POINTS = 12  # x values; times two gate values: 24 runs


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


SUBMITTER = """
import sys
from supervisor.client import Client
client = Client(sys.argv[1])
sweep = client.sweep(
    "testsim",
    base={"echo": ["x"], "results": {"nested": {"depth": {"ok": True}}}},
    grid={"x": range(int(sys.argv[3])), "fail_unless_exists": [None, sys.argv[2]]},
)
print(sweep.id, flush=True)
sys.stdin.read()  # stays until it is killed
"""

ATTACHER = """
import json, sys
from supervisor.client import Client
client = Client(sys.argv[1])
sweep = client.sweep_of(sys.argv[2])
print(json.dumps(sweep.wait(timeout=float(sys.argv[3]))), flush=True)
print(json.dumps(sweep.results()), flush=True)
sys.stdin.readline()  # the test opens the gate, then says go
again = sweep.failed().resubmit()
print(json.dumps(again.wait(timeout=float(sys.argv[3]))), flush=True)
print(json.dumps([len(sweep.failed()), len(sweep.results(status="COMPLETED"))]), flush=True)
"""


def test_a_sweep_outlives_the_process_that_submitted_it(
    harness: DaemonHarness, tmp_path: Path, python_worker: Callable[..., PythonWorker]
) -> None:
    harness.start()
    gate = tmp_path / "gate"
    config = str(harness.config)
    submitter = python_worker(SUBMITTER, config, str(gate), str(SWEEP_POINTS))
    sweep_id = submitter.read_line(DEADLINE)
    submitter.proc.send_signal(signal.SIGKILL)
    submitter.proc.wait(DEADLINE)

    attacher = python_worker(ATTACHER, config, sweep_id, str(DEADLINE))
    assert json.loads(attacher.read_line(DEADLINE)) == {"COMPLETED": 12, "FAILED": 12}
    rows = json.loads(attacher.read_line(DEADLINE))
    assert len(rows) == 2 * SWEEP_POINTS
    assert {(r["config.x"], r["config.fail_unless_exists"]) for r in rows} == {
        (x, g) for x in range(SWEEP_POINTS) for g in (None, str(gate))
    }
    for row in rows:
        if row["config.fail_unless_exists"] is None:
            assert row["status"] == "COMPLETED"
            assert row["results.echo.x"] == row["config.x"]
            assert row["results.nested.depth.ok"] is True
            assert row["attempt"] == 1 and row["duration_seconds"] >= 0
        else:
            assert row["status"] == "FAILED"
            assert row["results.echo.x"] is None and row["results.nested.depth.ok"] is None

    gate.touch()
    attacher.send("go")
    assert json.loads(attacher.read_line(DEADLINE)) == {"COMPLETED": 12}
    assert json.loads(attacher.read_line(DEADLINE)) == [0, 2 * SWEEP_POINTS]
    assert attacher.finish() == 0
    assert len(harness.store.list_runs(sweep_id=sweep_id)) == 3 * SWEEP_POINTS


def test_wait_returns_once_the_final_status_is_committed(
    harness: DaemonHarness, tmp_path: Path
) -> None:
    harness.start()
    release = tmp_path / "release"
    with Client(harness.config) as client:
        config = {"wait_for_file": str(release), "results": {"y": 7}, "stdout": "started"}
        run = client.submit("testsim", config)
        returned: list[tuple[str, float]] = []
        followed: list[str] = []

        def waiter() -> None:
            returned.append((run.wait(timeout=DEADLINE), time.monotonic()))

        def follower() -> None:
            # Its own client: handles are ids, and a client is used from one thread at a time.
            with Client(harness.config) as own:
                followed.extend(own.run(run.id).logs(follow=True))

        threads = [threading.Thread(target=waiter), threading.Thread(target=follower)]
        for thread in threads:
            thread.start()
        harness.wait_status(run.id, {"RUNNING"}, DEADLINE)
        wait_for("the first log line", lambda: followed or None, DEADLINE)
        release.touch()
        for thread in threads:
            thread.join(DEADLINE)
            assert not thread.is_alive()
        assert followed == ["started"]  # and following ended with the run
        status, _ = returned[0]
        assert status == "COMPLETED" == run.status
        # What wait() saw is the committed row: any other reader sees it too.
        row = harness.store.get(run.id)
        assert row.status == "COMPLETED" and row.completed_at is not None
        assert run.result() == {"y": 7}


def test_the_client_needs_no_daemon(harness: DaemonHarness, tmp_path: Path) -> None:
    with Client(harness.config) as client:
        with pytest.warns(NoDaemonWarning, match="no daemon has served"):
            run = client.submit("testsim", {"results": {"y": 1}}, name="early")
        doomed = client.submit("testsim", {"exit_code": 4})
        assert run.status == "PENDING" and run.name == "early"
        with pytest.raises(WaitTimeout):
            run.wait(timeout=0.2)
        harness.start()
        assert run.wait(timeout=DEADLINE) == "COMPLETED"
        assert run.result() == {"y": 1}
        with pytest.raises(RunFailed, match=f"run {doomed.id} ended FAILED"):
            doomed.result(timeout=DEADLINE)
        no_results = client.submit("testsim", {})
        with pytest.raises(ResultsError, match=r"wrote no results\.json"):
            no_results.result(timeout=DEADLINE)


def test_a_missing_database_is_named_and_not_created(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    db = tmp_path / "nowhere" / "runs.db"
    config.write_text(f"database = {json.dumps(str(db))}\n")
    with pytest.raises(NotFoundError, match=str(db)):
        Client(config)
    assert not db.exists()


# SPEC section 3: what another program may write. Anything else the client prepares is wrong.
ALLOWED_INSERTS = {"runs", "run_dependencies", "queue_pauses"}
ALLOWED_UPDATES = {("runs", "cancel_requested_at"), ("runs", "priority"), ("runs", "not_before")}
ALLOWED_DELETES = {"queue_pauses"}
# Connection set-up: the same pragmas every runsup connection sets, and the change counter.
ALLOWED_PRAGMAS = {"busy_timeout", "journal_mode", "synchronous", "foreign_keys", "data_version"}
WRITE_ACTIONS = {
    name: getattr(sqlite3, name)
    for name in dir(sqlite3)
    if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_", "SQLITE_ALTER", "SQLITE_REINDEX"))
    or name in ("SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_ANALYZE")
}
SUBMIT_COLUMNS = {
    "id", "name", "status", "config_json", "template", "created_at", "priority", "not_before",
    "sweep_id",
}  # fmt: skip


class WriteAudit:
    """An sqlite3 authorizer that records every write and pragma a connection prepares."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str | None, str | None]] = []
        self.pragmas: list[str] = []
        self._names = {code: name for name, code in WRITE_ACTIONS.items()}

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, trigger: str | None
    ) -> int:
        if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
            self.pragmas.append(arg1.lower())
        elif action in self._names and trigger is None:
            # A write inside a trigger is the schema's (the metrics tallies of migration 0006
            # and 0007), done for every program alike: only the client's own statements count.
            self.writes.append((self._names[action], arg1, arg2))
        return sqlite3.SQLITE_OK

    def forbidden(self) -> list[object]:
        """Writes and pragmas outside what SPEC section 3 allows."""
        bad: list[object] = []
        for action, table, column in self.writes:
            ok = (
                (action == "SQLITE_INSERT" and table in ALLOWED_INSERTS)
                or (action == "SQLITE_UPDATE" and (table, column) in ALLOWED_UPDATES)
                or (action == "SQLITE_DELETE" and table in ALLOWED_DELETES)
            )
            if not ok:
                bad.append((action, table, column))
        bad += [p for p in self.pragmas if p not in ALLOWED_PRAGMAS]
        return bad


def test_every_write_of_the_client_is_one_spec_3_allows(harness: DaemonHarness) -> None:
    audit = WriteAudit()
    with Client(harness.config) as client:
        client.store.install_authorizer(audit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDaemonWarning)
            first = client.submit(
                "testsim", {"exit_code": 3, "stdout": "hello"}, name="first", priority=5
            )
            sweep = client.sweep(
                "testsim", base={"echo": ["x"]}, grid={"x": [1, 2]}, after=[first.id]
            )
            doomed = client.submit("testsim", {"sleep": 60}, after_any=[first])
        assert doomed.cancel() is True and doomed.cancel() is False
        # Rows as another program writes them: nothing but SPEC section 3's submit columns.
        with sqlite3.connect(harness.db_path) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM runs").fetchall()
            events = conn.execute("SELECT count(*) FROM run_events").fetchone()[0]
            deps = conn.execute("SELECT run_id, depends_on, kind FROM run_dependencies").fetchall()
        assert len(rows) == 4 and events == 0
        for row in rows:
            filled = {k for k in row.keys() if row[k] is not None}  # noqa: SIM118
            extra = filled - SUBMIT_COLUMNS
            assert extra <= {"cancel_requested_at"}, extra
        assert sorted(tuple(d) for d in deps) == sorted(
            [(r, first.id, "afterok") for r in sweep.ids] + [(doomed.id, first.id, "afterany")]
        )

        harness.start()
        assert first.wait(timeout=DEADLINE) == "FAILED"
        assert sweep.wait(timeout=DEADLINE) == {"CANCELLED": 2}
        assert doomed.wait(timeout=DEADLINE) == "CANCELLED"
        again = client.runs([first.id]).failed().resubmit()
        assert again.wait(timeout=DEADLINE) == {"FAILED": 1}
        assert list(first.logs()) == ["hello"]
        assert len(sweep.results()) == 2 and first.refresh().status == "FAILED"
        for _change in sweep.watch(timeout=DEADLINE):
            pass
        assert audit.writes, "the audit saw no write at all"
        assert audit.forbidden() == []

        # The audit catches what is not allowed: the daemon's own submit logs a run_events row.
        client.store.store.submit("testsim", "{}")
        assert ("SQLITE_INSERT", "run_events", None) in audit.forbidden()


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


class FusionGui:
    """What FUSION's GUI does to the database (../shared/FUSION.md): it inserts a PENDING row,
    starts the simulation itself and writes RUNNING with its pid, then keeps writing progress
    columns into the row from the progress file, over and over, from its own connection."""

    def __init__(self, h: DaemonHarness) -> None:
        self.run_id = new_run_id()
        self.run_dir = h.runs_dir / self.run_id
        self.run_dir.mkdir(parents=True)
        self.db_path = h.db_path
        config = {
            "sleep": 1.5,
            "progress_after": [{"type": "complete", "exit_code": 0}],
            "results": {"y": 42},
        }
        (self.run_dir / "config.json").write_text(json.dumps(config))
        now = stamp(datetime.now(UTC))
        with sqlite3.connect(self.db_path, isolation_level=None) as conn:
            conn.execute(
                "INSERT INTO runs (id, status, config_json, template, created_at)"
                " VALUES (?, 'PENDING', ?, 'testsim', ?)",
                (self.run_id, json.dumps(config), now),
            )
            self.proc = subprocess.Popen(
                [sys.executable, str(TEST_SIM), str(self.run_dir / "config.json")],
                cwd=self.run_dir,
                start_new_session=True,
                env={"RUNSUP_PROGRESS_FILE": str(self.run_dir / "progress.jsonl")},
            )
            conn.execute(
                "UPDATE runs SET status='RUNNING', pid=?, pgid=?, started_at=?, run_dir=?"
                " WHERE id=?",
                (self.proc.pid, self.proc.pid, now, str(self.run_dir), self.run_id),
            )
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream_progress)
        self._thread.start()

    def _stream_progress(self) -> None:
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        try:
            while not self._stop.is_set():
                conn.execute(
                    "UPDATE runs SET current_erlang=?, current_iteration=?, total_iterations=6"
                    " WHERE id=?",
                    (300.0, self.writes % 6, self.run_id),
                )
                self.writes += 1
                time.sleep(0.002)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


FUSION_SIM = Path(__file__).resolve().parents[1] / "sims" / "fusionsim.py"


def fusion_template() -> str:
    """A template of the FUSION-like simulator, its progress read from its printed lines."""
    sys.path.insert(0, str(FUSION_SIM.parent))
    from fusionsim import ITERATION_PATTERN, START_PATTERN

    command = [sys.executable, str(FUSION_SIM), "--loads", "300", "350", "--iterations", "3"]
    command += ["--interval", "0.2"]  # each load lasts long enough to be seen
    patterns = json.dumps([START_PATTERN, ITERATION_PATTERN])
    return f"[templates.fusion]\ncommand = {json.dumps(command)}\nprogress_patterns = {patterns}\n"


def test_the_client_beside_a_program_writing_to_the_database(harness: DaemonHarness) -> None:
    harness.write_config(fusion_template())
    harness.start()
    gui = FusionGui(harness)
    try:
        with Client(harness.config) as client:
            # FUSION-like runs that print their progress: watch() sees it move.
            fusion = client.sweep("fusion", grid={"seed": [1, 2, 3]})
            seen = list(fusion.watch(timeout=DEADLINE))
            assert {c.run_id for c in seen if c.status == "COMPLETED"} == set(fusion.ids)
            assert {c.current_erlang for c in seen if c.current_iteration} >= {300.0, 350.0}
            with pytest.warns(ResultsWarning, match="wrote no results.json"):
                assert len(fusion.results()) == 3
            sweep = client.sweep(
                "testsim", base={"echo": ["x"], "sleep": 0.2}, grid={"x": list(range(8))}
            )
            changes = list(sweep.watch(timeout=DEADLINE))
            finals = {c.run_id: c.status for c in changes if c.is_final}
            assert finals == dict.fromkeys(sweep.ids, "COMPLETED")
            assert all(c.previous_status is None for c in changes[:1])
            rows = sweep.results()
            assert sorted(r["results.echo.x"] for r in rows) == list(range(8))
            # The GUI's own run: its process ended with a `complete` record; the daemon
            # settles it, and the client sees that like any other run.
            gui_run = client.run(gui.run_id)
            assert gui_run.wait(timeout=DEADLINE) == "COMPLETED"
            assert gui_run.result() == {"y": 42}
        wait_for("the GUI's progress writes", lambda: gui.writes > 10)
    finally:
        gui.close()
