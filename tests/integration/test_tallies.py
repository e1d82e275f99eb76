"""Metrics kept as runs finish (run_tallies, migration 0006) on a real SQLite file: the upgrade
counts what is there once, the triggers count every writer's final statuses, and a counter
never goes down (SPEC section 14)."""

from __future__ import annotations

import importlib
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from supervisor.db import (
    TIME_BUCKETS_SECONDS,
    Histogram,
    RunStats,
    Store,
    corrected_final_change,
    final_change,
    retry_change,
)
from supervisor.db.engine import make_engine
from supervisor.db.migrate import HEAD_REVISION, SCRIPT_LOCATION
from supervisor.db.prune import prune
from supervisor.db.schema import parse_timestamp
from supervisor.db.tallies import TABLE
from supervisor.states import RunStatus

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
TEMPLATES = ["a", "b"]
OTHER = "other"
MIGRATION = importlib.import_module("supervisor.db.migrations.versions.0006_run_tallies")
START_READS = importlib.import_module("supervisor.db.migrations.versions.0007_start_reads")


def make_database_at(path: Path, revision: str) -> None:
    """A file whose schema is exactly `revision`, made by our own migrations."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", SCRIPT_LOCATION)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert(conn: sqlite3.Connection, run_id: str, status: str, **cols: Any) -> None:
    """A row as another program writes it: plain sqlite3, any values."""
    values = {
        "id": run_id,
        "status": status,
        "config_json": "{}",
        "template": "a",
        "created_at": _stamp(NOW - timedelta(hours=2)),
        **cols,
    }
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    conn.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", list(values.values()))


def _varied_rows(conn: sqlite3.Connection) -> None:
    """Rows of every kind a full count must see: each status, spans in many buckets, a foreign
    template, out-of-memory failures, garbage timestamps."""
    spans = [0.2, 3, 12, 45, 200, 700, 3000, 9000, 100000, 10**6]
    for i, seconds in enumerate(spans):
        start = NOW - timedelta(hours=1)
        done = {
            "started_at": _stamp(start),
            "completed_at": _stamp(start + timedelta(seconds=seconds)),
        }
        _insert(conn, f"c{i:011d}", "COMPLETED", template="ab"[i % 2], **done)
        _insert(conn, f"f{i:011d}", "FAILED", error_message="out of memory: 1G", **done)
        _insert(conn, f"x{i:011d}", "CANCELLED", template=f"foreign{i}", **done)
    _insert(conn, "p00000000001", "PENDING")
    _insert(conn, "r00000000001", "RUNNING", started_at=_stamp(NOW - timedelta(minutes=3)))
    _insert(conn, "g00000000001", "COMPLETED", started_at="yesterday", completed_at="42")
    _insert(conn, "g00000000002", "FAILED", error_message="exit status 1")


def full_count(path: Path) -> RunStats:
    """The figures as a full count of the rows there are gives them (the scan metrics used to
    make on each scrape), by a plain, slow, obviously right Python loop."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT template, status, error_message,"
            " (julianday(completed_at) - julianday(started_at)) * 86400.0,"
            " (julianday(started_at) - julianday(created_at)) * 86400.0 FROM runs"
        ).fetchall()
    finally:
        conn.close()
    counts: dict[str, int] = {}
    finished: dict[tuple[str, str], int] = {}
    oom: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    for template, status, error, duration, wait in rows:
        label = template if template in TEMPLATES else OTHER
        counts[status] = counts.get(status, 0) + 1
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            finished[(label, status)] = finished.get((label, status), 0) + 1
            if status == "FAILED" and (error or "").startswith("out of memory"):
                oom[label] = oom.get(label, 0) + 1
            if duration is not None:
                durations.setdefault(label, []).append(max(duration, 0.0))
        if wait is not None:
            waits.setdefault(label, []).append(max(wait, 0.0))
    return RunStats(
        status_counts=counts,
        finished=finished,
        out_of_memory=oom,
        durations={t: histogram(v) for t, v in durations.items()},
        queue_waits={t: histogram(v) for t, v in waits.items()},
        oldest_pending_seconds=0.0,
        progress_age_seconds=0.0,
        reserved_cpus=0,
        reserved_memory_bytes=0,
        reserved_gpu_ids=frozenset(),
    )


def histogram(values: list[float]) -> Histogram:
    """A histogram of `values` over the tallies' bounds."""
    cumulative = tuple(sum(1 for v in values if v <= b) for b in TIME_BUCKETS_SECONDS)
    return Histogram(cumulative, len(values), sum(values))


def assert_same_counts(got: RunStats, want: RunStats) -> None:
    """Counters, gauges by status and histograms equal (sums to a microsecond a value)."""
    assert got.status_counts == want.status_counts
    assert got.finished == want.finished
    assert got.out_of_memory == want.out_of_memory
    for name in ("durations", "queue_waits"):
        g, w = getattr(got, name), getattr(want, name)
        assert set(g) == set(w), name
        for t in w:
            assert (g[t].cumulative, g[t].count) == (w[t].cumulative, w[t].count), (name, t)
            assert abs(g[t].total - w[t].total) < 1e-3 * max(1, w[t].count), (name, t)


def test_upgrade_counts_the_rows_already_there_once(tmp_path: Path) -> None:
    path = tmp_path / "r0004.db"
    make_database_at(path, "0004")
    conn = sqlite3.connect(path)
    with conn:
        _varied_rows(conn)
    conn.close()
    want = full_count(path)

    store = Store.open(f"sqlite:///{path}")
    try:
        got = store.run_stats(TEMPLATES, OTHER, NOW)
    finally:
        store.close()

    assert_same_counts(got, want)
    assert want.finished[("a", "COMPLETED")] == 6  # the fixture's rows are really there


def test_foreign_writers_rows_are_counted_by_the_triggers(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Store.open(f"sqlite:///{path}").close()  # a fresh file at head: nothing to backfill
    conn = sqlite3.connect(path)
    with conn:
        _varied_rows(conn)
    with conn:  # a GUI moves its own rows on, one statement at a time
        conn.execute(
            "UPDATE runs SET status = 'RUNNING', started_at = ? WHERE id = 'p00000000001'",
            (_stamp(NOW - timedelta(seconds=30)),),
        )
        conn.execute(
            "UPDATE runs SET status = 'FAILED', completed_at = ?, error_message = ?"
            " WHERE id = 'r00000000001'",
            (_stamp(NOW), "out of memory: killed"),
        )
    conn.close()
    want = full_count(path)

    store = Store.open(f"sqlite:///{path}")
    try:
        got = store.run_stats(TEMPLATES, OTHER, NOW)
    finally:
        store.close()

    assert_same_counts(got, want)
    assert want.out_of_memory["a"] == 11


def test_the_migration_keeps_the_live_bounds_and_its_triggers_are_there(db_path: Path) -> None:
    assert tuple(MIGRATION.TIME_BUCKETS_SECONDS) == TIME_BUCKETS_SECONDS
    assert MIGRATION.TABLE == TABLE
    Store.open(f"sqlite:///{db_path}").close()
    conn = sqlite3.connect(db_path)
    try:
        names = {
            n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        conn.close()
    assert version == HEAD_REVISION
    # A later migration that rebuilds `runs` must make them again: this says so if it forgets.
    assert names >= set(MIGRATION.TRIGGERS) | set(START_READS.TRIGGERS)


# -- a chaos of writers -------------------------------------------------------------------------

CHAOS_STEPS = 600
CHAOS_SEED = 23
CHAOS_TEMPLATES = ("a", "b", "made-up-by-a-gui")


class Ledger:
    """What the counters must say: every end of an attempt and every start, as they happened
    (the full count of the history, which the rows alone no longer hold once some are deleted,
    retried or corrected)."""

    def __init__(self) -> None:
        self.finished: dict[tuple[str, str], int] = {}
        self.oom: dict[str, int] = {}
        self.durations: dict[str, list[float]] = {}
        self.waits: dict[str, list[float]] = {}

    @staticmethod
    def label(template: str) -> str:
        return template if template in TEMPLATES else OTHER

    def ended(self, template: str, status: str, seconds: float | None, oom: bool) -> None:
        t = self.label(template)
        self.finished[(t, status)] = self.finished.get((t, status), 0) + 1
        if oom:
            self.oom[t] = self.oom.get(t, 0) + 1
        if seconds is not None:
            self.durations.setdefault(t, []).append(max(seconds, 0.0))

    def started(self, template: str, seconds: float | None) -> None:
        if seconds is not None:
            self.waits.setdefault(self.label(template), []).append(max(seconds, 0.0))

    def stats(self, status_counts: dict[str, int]) -> RunStats:
        return RunStats(
            status_counts=status_counts,
            finished=self.finished,
            out_of_memory=self.oom,
            durations={t: histogram(v) for t, v in self.durations.items()},
            queue_waits={t: histogram(v) for t, v in self.waits.items()},
            oldest_pending_seconds=0.0,
            progress_age_seconds=0.0,
            reserved_cpus=0,
            reserved_memory_bytes=0,
            reserved_gpu_ids=frozenset(),
        )


def _seconds(start: object, end: object) -> float | None:
    """end - start as julianday() reads the stored texts; None if either is not a time."""
    a, b = parse_timestamp(start), parse_timestamp(end)
    return None if a is None or b is None else (b - a).total_seconds()


def _monotonic_view(stats: RunStats) -> dict[tuple[str, ...], float]:
    """Every counter value a scrape exposes (counters, histogram buckets, counts and sums)."""
    out: dict[tuple[str, ...], float] = {}
    for (t, s), n in stats.finished.items():
        out[("finished", t, s)] = n
    for t, n in stats.out_of_memory.items():
        out[("oom", t)] = n
    for name, series in (("duration", stats.durations), ("wait", stats.queue_waits)):
        for t, h in series.items():
            out[(name, t, "count")] = h.count
            out[(name, t, "sum")] = h.total
            for bound, n in zip(TIME_BUCKETS_SECONDS, h.cumulative, strict=True):
                out[(name, t, repr(bound))] = n
    return out


class Chaos:
    """The daemon's writes (through the store) and other programs' (plain sqlite3), at random."""

    def __init__(self, store: Store, path: Path, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.foreign = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.ledger = Ledger()
        self.overturned: list[str] = []  # RUNNING rows a GUI marked FAILED, the daemon's to fix
        self.serial = 0

    def rows(self, where: str) -> list[sqlite3.Row]:
        self.foreign.row_factory = sqlite3.Row
        return self.foreign.execute(f"SELECT * FROM runs WHERE {where}").fetchall()

    def pick(self, where: str) -> sqlite3.Row | None:
        rows = self.rows(where)
        return self.rng.choice(rows) if rows else None

    def new_id(self) -> str:
        self.serial += 1
        return f"{self.serial:012x}"

    def step(self) -> None:
        actions = [
            self.submit,
            self.submit,
            self.start,
            self.start,
            self.finish,
            self.finish,
            self.retry,
            self.gui_marks_failed,
            self.correct,
            self.gui_inserts_final,
            self.gui_starts,
            self.cancel_pending,
            self.delete,
        ]
        if self.rng.random() < 0.02:
            actions = [self.prune_all]
        self.rng.choice(actions)()

    # -- the daemon's writes -----------------------------------------------------------------

    def submit(self) -> None:
        # Submitted a while ago, by another program: queue waits land in many buckets.
        age = timedelta(seconds=self.rng.choice([0.1, 3, 40, 500, 4000, 90000]))
        _insert(
            self.foreign,
            self.new_id(),
            "PENDING",
            template=self.rng.choice(CHAOS_TEMPLATES),
            created_at=_stamp(datetime.now(UTC) - age),
        )

    def start(self) -> None:
        row = self.pick("status = 'PENDING'")
        if row is None:
            return
        values = {"pid": 1, "pgid": 1, "started_at": datetime.now(UTC)}
        if self.store.transition(row["id"], RunStatus.RUNNING, reason="launched", values=values):
            after = self.rows(f"id = '{row['id']}'")[0]
            self.ledger.started(row["template"], _seconds(after["created_at"], after["started_at"]))

    def finish(self) -> None:
        row = self.pick("status = 'RUNNING'")
        if row is None:
            return
        to = self.rng.choice([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
        oom = to == RunStatus.FAILED and self.rng.random() < 0.3
        message = "out of memory: killed at its memory_max" if oom else "exited with code 1"
        change = final_change(row["id"], to, reason="exit", error_message=message)
        if self.store.commit_batch([change])[0]:
            after = self.rows(f"id = '{row['id']}'")[0]
            seconds = _seconds(after["started_at"], after["completed_at"])
            self.ledger.ended(row["template"], to.value, seconds, oom)

    def retry(self) -> None:
        row = self.pick("status = 'RUNNING'")
        if row is None:
            return
        oom = self.rng.random() < 0.5
        change = retry_change(
            row["id"],
            attempt=(row["attempt"] or 1) + 1,
            not_before=datetime.now(UTC),
            reason="retry: attempt ended signal",
            out_of_memory=oom,
        )
        if self.store.commit_batch([change])[0]:
            seconds = _seconds(row["started_at"], _stamp(change.at))
            self.ledger.ended(row["template"], RunStatus.FAILED.value, seconds, oom)

    def correct(self) -> None:
        if not self.overturned:
            return
        run_id = self.overturned.pop(self.rng.randrange(len(self.overturned)))
        change = corrected_final_change(
            run_id, RunStatus.FAILED, RunStatus.COMPLETED, reason="exited with code 0"
        )
        if self.store.commit_batch([change])[0]:
            after = self.rows(f"id = '{run_id}'")[0]
            seconds = _seconds(after["started_at"], after["completed_at"])
            self.ledger.ended(after["template"], "COMPLETED", seconds, False)

    def cancel_pending(self) -> None:
        row = self.pick("status = 'PENDING'")
        if row is None:
            return
        change = final_change(
            row["id"], RunStatus.CANCELLED, reason="asked", expect=[RunStatus.PENDING]
        )
        if self.store.commit_batch([change])[0]:
            after = self.rows(f"id = '{row['id']}'")[0]
            seconds = _seconds(after["started_at"], after["completed_at"])  # never started
            self.ledger.ended(row["template"], "CANCELLED", seconds, False)

    def prune_all(self) -> None:
        prune(self.store, datetime.now(UTC) + timedelta(days=1))
        self.overturned = [r for r in self.overturned if self.rows(f"id = '{r}'")]

    # -- other programs' writes ----------------------------------------------------------------

    def gui_marks_failed(self) -> None:
        row = self.pick("status = 'RUNNING'")
        if row is None:
            return
        end = _stamp(datetime.now(UTC))
        with self.foreign:
            n = self.foreign.execute(
                "UPDATE runs SET status = 'FAILED', completed_at = ?,"
                " error_message = 'marked failed by the GUI' WHERE id = ? AND status = 'RUNNING'",
                (end, row["id"]),
            ).rowcount
        if n:
            self.overturned.append(row["id"])
            self.ledger.ended(row["template"], "FAILED", _seconds(row["started_at"], end), False)

    def gui_inserts_final(self) -> None:
        end = datetime.now(UTC)
        spans = [0.5, 4, 20, 100, 2000, 20000, 200000, 2 * 10**6]
        ran = timedelta(seconds=self.rng.choice(spans))
        status = self.rng.choice(["COMPLETED", "FAILED", "CANCELLED"])
        oom = status == "FAILED" and self.rng.random() < 0.5
        row = {
            "template": self.rng.choice(CHAOS_TEMPLATES),
            "created_at": _stamp(end - ran - timedelta(seconds=7)),
            "started_at": _stamp(end - ran),
            "completed_at": _stamp(end),
            "error_message": "out of memory (GUI's words)" if oom else None,
        }
        _insert(self.foreign, self.new_id(), status, **row)
        self.ledger.started(row["template"], _seconds(row["created_at"], row["started_at"]))
        seconds = _seconds(row["started_at"], row["completed_at"])
        self.ledger.ended(row["template"], status, seconds, oom)

    def gui_starts(self) -> None:
        # A GUI starting a run itself, in two statements: RUNNING first, its start after.
        row = self.pick("status = 'PENDING'")
        if row is None:
            return
        start = _stamp(datetime.now(UTC))
        self.foreign.execute("UPDATE runs SET status = 'RUNNING' WHERE id = ?", (row["id"],))
        self.foreign.execute("UPDATE runs SET started_at = ? WHERE id = ?", (start, row["id"]))
        self.ledger.started(row["template"], _seconds(row["created_at"], start))

    def delete(self) -> None:
        row = self.pick("status IN ('COMPLETED', 'FAILED', 'CANCELLED')")
        if row is None:
            return
        with self.foreign:
            self.foreign.execute("DELETE FROM run_events WHERE run_id = ?", (row["id"],))
            self.foreign.execute("DELETE FROM runs WHERE id = ?", (row["id"],))
        if row["id"] in self.overturned:
            self.overturned.remove(row["id"])


def test_counters_equal_the_history_and_never_go_down_through_chaos(
    store: Store, db_path: Path
) -> None:
    chaos = Chaos(store, db_path, random.Random(CHAOS_SEED))
    last: dict[tuple[str, ...], float] = {}
    try:
        for step in range(CHAOS_STEPS):
            chaos.step()
            scraped = _monotonic_view(store.run_stats(TEMPLATES, OTHER, datetime.now(UTC)))
            went_down = {
                k: (v, scraped.get(k, 0)) for k, v in last.items() if scraped.get(k, 0) < v - 1e-6
            }
            assert not went_down, f"step {step}: {went_down}"
            last = scraped
        gauge = dict(
            chaos.foreign.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        )
    finally:
        chaos.foreign.close()

    got = store.run_stats(TEMPLATES, OTHER, datetime.now(UTC))
    assert_same_counts(got, chaos.ledger.stats(gauge))
    # The chaos really went through every case.
    assert chaos.ledger.finished.get((OTHER, "COMPLETED"), 0) > 0
    assert sum(chaos.ledger.oom.values()) > 0
    assert len({k for k in last if k[0] == "duration"}) > 10


def test_upgrade_to_0007_marks_the_final_statuses_no_event_says(tmp_path: Path) -> None:
    path = tmp_path / "r0006.db"
    make_database_at(path, "0006")
    conn = sqlite3.connect(path)
    with conn:
        for run_id, status, last_event in (
            ("a00000000001", "COMPLETED", "COMPLETED"),  # the daemon's own end
            ("a00000000002", "FAILED", "RUNNING"),  # a GUI's FAILED over a live run
            ("a00000000003", "CANCELLED", None),  # a foreign row, no history at all
            ("a00000000004", "RUNNING", "RUNNING"),
        ):
            _insert(conn, run_id, status, keeper_pid=9, boot_id="boot")
            if last_event is not None:
                conn.execute(
                    "INSERT INTO run_events (run_id, at, to_status) VALUES (?, ?, ?)",
                    (run_id, _stamp(NOW), last_event),
                )
    conn.close()

    store = Store.open(f"sqlite:///{path}")
    try:
        found = {r.id for r in store.overturned_runs("boot")}
    finally:
        store.close()

    assert found == {"a00000000002", "a00000000003"}
