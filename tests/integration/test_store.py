"""The store on a real SQLite file in WAL mode, checked from outside with the stdlib sqlite3."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.exc import DBAPIError

from supervisor.cli.views import run_details, runs_table
from supervisor.db import ProgressUpdate, Store, retry_change, utcnow
from supervisor.errors import NotFoundError
from supervisor.executors.base import ProcessRecord
from supervisor.states import ALLOWED_TRANSITIONS, RunStatus

if TYPE_CHECKING:
    from conftest import PythonWorker

PENDING, RUNNING = RunStatus.PENDING, RunStatus.RUNNING
COMPLETED, FAILED, CANCELLED = RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED

# SPEC section 3, written out here rather than taken from the code under test.
SPEC_TRANSITIONS: dict[RunStatus, set[RunStatus]] = {
    PENDING: {RUNNING, CANCELLED, FAILED},
    RUNNING: {COMPLETED, FAILED, CANCELLED, PENDING},  # PENDING: a retry (section 11)
    COMPLETED: set(),
    FAILED: set(),
    CANCELLED: set(),
}
ALLOWED = [(a, b) for a in RunStatus for b in RunStatus if b in SPEC_TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a in RunStatus for b in RunStatus if b not in SPEC_TRANSITIONS[a]]

TIMESTAMP_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")
RACE_ROUNDS = 20
RACE_TIMEOUT_SECONDS = 30.0
# A write must not wait for a reader in WAL mode; the busy timeout (30 s) is far above this.
PROMPT_WRITE_SECONDS = 5.0


# -- helpers ----------------------------------------------------------------


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain stdlib connection, as another program would open the file."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def raw_row(path: Path, run_id: str) -> dict[str, Any]:
    """Every column of one run, as stored."""
    with raw_connect(path) as conn:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row is not None, f"run {run_id} not in the database"
    return dict(row)


def raw_events(path: Path, run_id: str) -> list[dict[str, Any]]:
    """The run_events rows of one run, oldest first, as stored."""
    with raw_connect(path) as conn:
        rows = conn.execute(
            "SELECT * FROM run_events WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
    return [dict(r) for r in rows]


def launch(store: Store, run_id: str, pid: int = 4242) -> bool:
    """PENDING -> RUNNING with made-up process identity."""
    process = ProcessRecord(
        pid=pid,
        pgid=pid,
        start_ticks=1000,
        boot_id="00000000-0000-0000-0000-000000000000",
        keeper_pid=pid - 1,
        keeper_start_ticks=999,
    )
    return store.mark_running(run_id, process, run_dir=f"/tmp/runs/{run_id}")


def run_in(store: Store, status: RunStatus) -> str:
    """A new run brought to `status` through allowed transitions."""
    run_id = store.submit("erlang-demo", '{"seed": 1}', name=f"in {status}").id
    if status in (RUNNING, COMPLETED):
        assert launch(store, run_id)
    if status == COMPLETED:
        assert store.finish(run_id, COMPLETED, reason="exit 0", exit_code=0)
    elif status in (FAILED, CANCELLED):
        assert store.transition(run_id, status, reason=f"setup {status}")
    assert store.get(run_id).status == status
    return run_id


def parse_utc(text: str) -> datetime:
    """A stored timestamp (naive text, UTC by contract) as an aware datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


# -- the file ---------------------------------------------------------------


def test_journal_mode_is_wal(store: Store, db_path: Path) -> None:
    store.submit("erlang-demo", "{}")
    with raw_connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_spec_transitions_match_states_module() -> None:
    assert {k: set(v) for k, v in ALLOWED_TRANSITIONS.items()} == SPEC_TRANSITIONS


# -- transitions ------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=lambda s: str(s))
def test_allowed_transition_writes_status_and_event(
    store: Store, db_path: Path, source: RunStatus, target: RunStatus
) -> None:
    run_id = run_in(store, source)
    events_before = raw_events(db_path, run_id)

    assert store.transition(run_id, target, reason=f"because {source}->{target}")

    assert raw_row(db_path, run_id)["status"] == target.value
    events_after = raw_events(db_path, run_id)
    assert events_after[: len(events_before)] == events_before
    assert len(events_after) == len(events_before) + 1
    new = events_after[-1]
    assert (new["run_id"], new["from_status"], new["to_status"], new["reason"]) == (
        run_id,
        source.value,
        target.value,
        f"because {source}->{target}",
    )
    assert TIMESTAMP_TEXT.match(new["at"])


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=lambda s: str(s))
def test_forbidden_transition_changes_nothing(
    store: Store, db_path: Path, source: RunStatus, target: RunStatus
) -> None:
    run_id = run_in(store, source)
    row_before, events_before = raw_row(db_path, run_id), raw_events(db_path, run_id)

    assert store.transition(run_id, target, reason="must not happen", values={"pid": 1}) is False

    assert raw_row(db_path, run_id) == row_before
    assert raw_events(db_path, run_id) == events_before


@pytest.mark.parametrize("source", [RUNNING, COMPLETED, FAILED, CANCELLED])
def test_mark_running_only_from_pending(store: Store, db_path: Path, source: RunStatus) -> None:
    run_id = run_in(store, source)
    row_before, events_before = raw_row(db_path, run_id), raw_events(db_path, run_id)
    assert launch(store, run_id, pid=999) is False
    assert raw_row(db_path, run_id) == row_before
    assert raw_events(db_path, run_id) == events_before


def test_finish_pending_as_completed_is_refused(store: Store, db_path: Path) -> None:
    run_id = run_in(store, PENDING)
    row_before = raw_row(db_path, run_id)
    assert store.finish(run_id, COMPLETED, reason="exit 0", exit_code=0) is False
    assert raw_row(db_path, run_id) == row_before
    assert len(raw_events(db_path, run_id)) == 1


def test_transition_of_unknown_run_is_false(store: Store, db_path: Path) -> None:
    assert store.transition("0123456789ab", CANCELLED, reason="x") is False
    with raw_connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM run_events").fetchone()[0] == 0


def test_mark_running_writes_pid_and_pgid_in_the_same_commit(store: Store, db_path: Path) -> None:
    run_id = run_in(store, PENDING)
    assert launch(store, run_id, pid=31337)
    row = raw_row(db_path, run_id)
    assert (row["status"], row["pid"], row["pgid"]) == ("RUNNING", 31337, 31337)
    assert row["run_dir"] == f"/tmp/runs/{run_id}"
    assert TIMESTAMP_TEXT.match(row["started_at"])
    assert [e["to_status"] for e in raw_events(db_path, run_id)] == ["PENDING", "RUNNING"]


def test_a_run_is_attempt_1_once_it_starts_and_a_retry_keeps_its_number(
    store: Store, db_path: Path
) -> None:
    # SPEC section 3: attempt is NULL until the run first starts, 1 once it has started.
    run_id = run_in(store, PENDING)
    assert raw_row(db_path, run_id)["attempt"] is None
    assert launch(store, run_id)
    assert raw_row(db_path, run_id)["attempt"] == 1
    retry = retry_change(run_id, attempt=2, not_before=utcnow(), reason="attempt 1 failed")
    assert store.commit_batch([retry]) == [True]
    assert launch(store, run_id)
    assert raw_row(db_path, run_id)["attempt"] == 2


@pytest.fixture
def failing_event_insert(db_path: Path, store: Store) -> Iterator[None]:
    """A trigger that makes inserting an event with reason 'boom' abort its transaction."""
    with raw_connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON run_events WHEN NEW.reason = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    yield
    with raw_connect(db_path) as conn:
        conn.execute("DROP TRIGGER boom")


@pytest.mark.usefixtures("failing_event_insert")
def test_status_change_rolls_back_when_its_event_cannot_be_written(
    store: Store, db_path: Path
) -> None:
    pending = run_in(store, PENDING)
    running = run_in(store, RUNNING)
    rows_before = {r: raw_row(db_path, r) for r in (pending, running)}

    with pytest.raises(DBAPIError, match="boom"):
        store.transition(pending, CANCELLED, reason="boom")
    with pytest.raises(DBAPIError, match="boom"):
        process = ProcessRecord(
            pid=5, pgid=5, start_ticks=1, boot_id="b", keeper_pid=4, keeper_start_ticks=1
        )
        store.mark_running(pending, process, run_dir="/x", reason="boom")
    with pytest.raises(DBAPIError, match="boom"):
        store.finish(running, FAILED, reason="boom", exit_code=3, error_message="x")

    assert {r: raw_row(db_path, r) for r in (pending, running)} == rows_before


# -- timestamps -------------------------------------------------------------


@pytest.fixture
def far_from_utc_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 7 hours ahead of UTC, so local-time timestamps would show."""
    monkeypatch.setenv("TZ", "XXX-07")
    time.tzset()
    assert time.localtime().tm_hour != time.gmtime().tm_hour or time.timezone != 0
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc_timezone")
def test_timestamps_are_utc_text(store: Store, db_path: Path) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    run_id = store.submit("erlang-demo", "{}").id
    assert store.claim_launch(run_id)
    assert launch(store, run_id)
    _, requested = store.request_cancel(run_id)
    assert requested
    assert store.record_progress([ProgressUpdate(run_id, 300.0, 4, 3, 10, 0, 120, 0)]) == 1
    assert store.finish(run_id, CANCELLED, reason="cancelled")
    after = datetime.now(UTC) + timedelta(seconds=2)

    row = raw_row(db_path, run_id)
    columns = (
        "created_at",
        "launch_claimed_at",
        "started_at",
        "cancel_requested_at",
        "progress_updated_at",
        "completed_at",
    )
    stored = [row[c] for c in columns] + [e["at"] for e in raw_events(db_path, run_id)]
    for text in stored:
        assert isinstance(text, str) and TIMESTAMP_TEXT.match(text), text
        assert before <= parse_utc(text) <= after, f"{text} is not the UTC time now"

    record = store.get(run_id)
    assert record.created_at is not None and record.created_at.tzinfo is not None
    assert record.created_at.utcoffset() == timedelta(0)
    assert record.created_at == parse_utc(row["created_at"])


# -- races between processes -------------------------------------------------

# One process of a race: opens the store, then for each run id it is given, says "armed",
# waits for the go line, acts, and reports whether it won.
RACE_WORKER = """
import os, sys
from supervisor.db import Store
from supervisor.executors.base import ProcessRecord
from supervisor.states import RunStatus

store = Store.open(sys.argv[1])
role = sys.argv[2]
while run_id := sys.stdin.readline().strip():
    print("armed", flush=True)
    sys.stdin.readline()
    if role == "launch":
        process = ProcessRecord(
            pid=os.getpid(), pgid=os.getpid(), start_ticks=1, boot_id="b", keeper_pid=1,
            keeper_start_ticks=1,
        )
        won = store.mark_running(run_id, process, run_dir="/tmp/" + run_id)
    elif role == "cancel":
        # Cancelling a never-started run: only from PENDING (a RUNNING one needs signals).
        won = store.transition(
            run_id, RunStatus.CANCELLED, reason="race cancel", expect=[RunStatus.PENDING]
        )
    else:
        won = store.claim_launch(run_id)
    print("won" if won else "lost", flush=True)
store.close()
"""


def race(
    start: Callable[..., PythonWorker], url: str, roles: tuple[str, str], run_ids: list[str]
) -> list[dict[str, bool]]:
    """Two processes apply their role to each run at the same moment; who won, per run."""
    workers = [start(RACE_WORKER, url, role) for role in roles]
    outcome: list[dict[str, bool]] = []
    for run_id in run_ids:
        for w in workers:
            w.send(run_id)
        for w in workers:
            assert w.read_line(RACE_TIMEOUT_SECONDS) == "armed"
        for w in workers:  # both are blocked on this line: release them together
            w.send("go")
        answers = [w.read_line(RACE_TIMEOUT_SECONDS) for w in workers]
        outcome.append(
            {
                f"{i}:{role}": a == "won"
                for i, (role, a) in enumerate(zip(roles, answers, strict=True))
            }
        )
    for w in workers:
        assert w.finish(RACE_TIMEOUT_SECONDS) == 0
    return outcome


def test_launch_and_cancel_race_has_exactly_one_winner(
    store: Store, db_url: str, db_path: Path, python_worker: Callable[..., PythonWorker]
) -> None:
    run_ids = [run_in(store, PENDING) for _ in range(RACE_ROUNDS)]
    outcome = race(python_worker, db_url, ("launch", "cancel"), run_ids)

    winners = {"launch": 0, "cancel": 0}
    for run_id, result in zip(run_ids, outcome, strict=True):
        assert sum(result.values()) == 1, result
        (winner,) = [k.split(":", 1)[1] for k, won in result.items() if won]
        winners[winner] += 1
        row = raw_row(db_path, run_id)
        events = raw_events(db_path, run_id)
        assert [e["to_status"] for e in events] == ["PENDING", row["status"]]
        assert events[-1]["from_status"] == "PENDING"
        if winner == "launch":
            assert row["status"] == "RUNNING" and row["pid"] is not None
        else:
            assert row["status"] == "CANCELLED" and row["pid"] is None
    print(f"race winners over {RACE_ROUNDS} rounds: {winners}")


def test_two_claimers_race_has_exactly_one_winner(
    store: Store, db_url: str, db_path: Path, python_worker: Callable[..., PythonWorker]
) -> None:
    run_ids = [run_in(store, PENDING) for _ in range(RACE_ROUNDS)]
    outcome = race(python_worker, db_url, ("claim", "claim"), run_ids)
    for run_id, result in zip(run_ids, outcome, strict=True):
        assert sum(result.values()) == 1, result
        row = raw_row(db_path, run_id)
        assert row["status"] == "PENDING" and row["launch_claimed_at"] is not None
        assert len(raw_events(db_path, run_id)) == 1  # a claim is not a status change
    assert store.pending_runs(limit=100) == []


# -- readers and writers ----------------------------------------------------

READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
def look():
    status = conn.execute("SELECT status FROM runs WHERE id = ?", (sys.argv[2],)).fetchone()[0]
    count = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    print(status, count, flush=True)
look()
sys.stdin.readline()
look()
conn.execute("COMMIT")
look()
"""


def test_open_reader_neither_blocks_writes_nor_sees_them(
    store: Store, db_path: Path, python_worker: Callable[..., PythonWorker]
) -> None:
    run_id = run_in(store, PENDING)
    reader = python_worker(READER, str(db_path), run_id)
    assert reader.read_line() == "PENDING 1"  # its read transaction is now open

    started = time.monotonic()
    assert launch(store, run_id)
    assert store.record_progress([ProgressUpdate(run_id, 1.0, 2, 3, 4, 0, 10, 0)]) == 1
    store.submit("erlang-demo", "{}")
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT_WRITE_SECONDS, f"writes waited {elapsed:.1f} s for a reader"
    assert store.get(run_id).status == RUNNING

    reader.send()
    assert reader.read_line() == "PENDING 1"  # still the old snapshot
    assert reader.read_line() == "RUNNING 2"  # after its transaction ended
    assert reader.finish() == 0


# -- rows written by other programs -----------------------------------------


def test_foreign_rows_with_garbage_read_without_raising(store: Store, db_path: Path) -> None:
    with raw_connect(db_path) as conn:
        conn.execute(
            "INSERT INTO runs (id, name, status, config_json, template, created_at, started_at,"
            " completed_at, pid, pgid, current_erlang, total_erlangs, current_iteration,"
            " cancel_requested_at, exit_code)"
            " VALUES ('aaaaaaaaaaaa', 'föreign ✓', 'RUNNING', '{}', 'erlang-demo', 'garbage',"
            " '2024-13-45 99:99:99', 12345, 'abc', '12x', 'fast', '7', 'three', x'00ff', 'n/a')"
        )
        conn.execute(
            "INSERT INTO run_events (run_id, at, from_status, to_status, reason)"
            " VALUES ('aaaaaaaaaaaa', 'not a time', NULL, 'RUNNING', NULL)"
        )
        # A submission as SPEC lets other programs make it: ISO text with a 'T' and an offset.
        conn.execute(
            "INSERT INTO runs (id, status, config_json, template, created_at)"
            " VALUES ('bbbbbbbbbbbb', 'PENDING', '{\"a\": 1}', 'erlang-demo',"
            " '2024-05-06T07:08:09+02:00')"
        )

    run = store.get("aaaaaaaaaaaa")
    assert run.name == "föreign ✓"
    assert (run.created_at, run.started_at, run.completed_at, run.cancel_requested_at) == (
        None,
        None,
        None,
        None,
    )
    assert (run.pid, run.pgid, run.current_erlang, run.current_iteration) == (
        None,
        None,
        None,
        None,
    )
    assert run.total_erlangs == 7
    assert run.exit_code is None
    assert [e.at for e in store.events("aaaaaaaaaaaa")] == [None]

    listed = {r.id for r in store.list_runs()}
    assert listed == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}
    assert store.counts() == {"RUNNING": 1, "PENDING": 1}
    json.dumps([r.to_json() for r in store.list_runs()])
    assert "aaaaaaaaaaaa" in runs_table(store.list_runs())
    assert "föreign" in run_details(run, store.events(run.id))

    pending = store.pending_runs(limit=10)
    assert [r.id for r in pending] == ["bbbbbbbbbbbb"]
    assert pending[0].created_at == datetime(2024, 5, 6, 5, 8, 9, tzinfo=UTC)


def test_not_before_written_with_an_offset_or_a_t_reads_as_its_instant(
    store: Store, db_path: Path
) -> None:
    # SPEC section 3: ISO text with a T or a UTC offset means that instant, never text.
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    rows = {
        "aaaaaaaaaaaa": "2026-12-07T12:50:00+01:00",  # 11:50 UTC: past, though "12:50" > "12:00"
        "bbbbbbbbbbbb": "2026-12-07 11:10:00-01:00",  # 12:10 UTC: to come, though "11:10" < now
        "cccccccccccc": "2026-12-07T12:05:00Z",  # 12:05 UTC: to come, the earliest
        "dddddddddddd": "2026-12-07T11:59:59.500000",  # no offset: UTC, past
    }
    with raw_connect(db_path) as conn:
        for run_id, when in rows.items():
            conn.execute(
                "INSERT INTO runs (id, status, config_json, template, created_at, not_before)"
                " VALUES (?, 'PENDING', '{}', 'erlang-demo', '2026-12-07 10:00:00', ?)",
                (run_id, when),
            )
    startable = {r.id for r in store.pending_runs(limit=10, now=now)}
    assert startable == {"aaaaaaaaaaaa", "dddddddddddd"}
    assert store.next_not_before(now) == datetime(2026, 12, 7, 12, 5, tzinfo=UTC)
    later = datetime(2026, 12, 7, 12, 6, tzinfo=UTC)
    assert store.next_not_before(later) == datetime(2026, 12, 7, 12, 10, tzinfo=UTC)
    assert len(store.pending_runs(limit=10, now=later)) == 3


# -- cancel requests ---------------------------------------------------------


def test_request_cancel_of_pending_run(store: Store, db_path: Path) -> None:
    run_id = run_in(store, PENDING)
    run, requested = store.request_cancel(run_id)
    assert requested
    assert run.status == PENDING and run.cancel_requested_at is not None
    first = raw_row(db_path, run_id)
    assert TIMESTAMP_TEXT.match(first["cancel_requested_at"])
    assert len(raw_events(db_path, run_id)) == 1  # a request is not a status change

    again, requested_again = store.request_cancel(run_id)
    assert not requested_again
    assert raw_row(db_path, run_id) == first
    assert again.cancel_requested_at == run.cancel_requested_at

    assert store.claim_launch(run_id) is False
    assert [r.id for r in store.cancel_requests()] == [run_id]


def test_request_cancel_of_running_run(store: Store) -> None:
    run_id = run_in(store, RUNNING)
    run, requested = store.request_cancel(run_id)
    assert requested and run.status == RUNNING and run.cancel_requested_at is not None
    assert [r.id for r in store.cancel_requests()] == [run_id]


@pytest.mark.parametrize("status", [COMPLETED, FAILED, CANCELLED])
def test_request_cancel_of_final_run_changes_nothing(
    store: Store, db_path: Path, status: RunStatus
) -> None:
    run_id = run_in(store, status)
    before = raw_row(db_path, run_id)
    run, requested = store.request_cancel(run_id)
    assert not requested
    assert run.status == status
    assert raw_row(db_path, run_id) == before
    assert store.cancel_requests() == []


def test_request_cancel_of_unknown_run(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.request_cancel("0123456789ab")


# -- progress ----------------------------------------------------------------


def test_record_progress_writes_running_runs_only(store: Store, db_path: Path) -> None:
    running = [run_in(store, RUNNING) for _ in range(2)]
    others = [run_in(store, PENDING), run_in(store, COMPLETED), run_in(store, FAILED)]
    before = {r: raw_row(db_path, r) for r in others}
    updates = [
        ProgressUpdate(r, 300.0 + i, 4, i + 1, 10, i, 100 * (i + 1), i)
        for i, r in enumerate(running + others)
    ]

    assert store.record_progress(updates) == 2

    for i, run_id in enumerate(running):
        row = raw_row(db_path, run_id)
        assert (
            row["current_erlang"],
            row["total_erlangs"],
            row["current_iteration"],
            row["total_iterations"],
            row["erlang_index"],
            row["progress_offset"],
            row["progress_bad_lines"],
        ) == (300.0 + i, 4, i + 1, 10, i, 100 * (i + 1), i)
        assert TIMESTAMP_TEXT.match(row["progress_updated_at"])
    assert {r: raw_row(db_path, r) for r in others} == before
    assert store.record_progress([]) == 0
