"""Deleting old final runs (SPEC section 7, `runsup db prune`), in small transactions.

A run is pruned with its `run_events` and `run_dependencies` rows in one transaction, so a
reader sees it whole or not at all. Never a PENDING or RUNNING run, nor a run that a run not
yet final depends on (a RUNNING run may be retried and wait again for its dependencies). The
metrics stay right: counters keep what the pruned rows counted (run_tallies has no trigger on
DELETE for them), the status gauge follows the rows.

Other programs keep writing meanwhile: each batch is one write transaction sized to hold the
lock about PRUNE_BATCH_BUDGET_SECONDS (the size adapts to the measured time), candidates are
found in read transactions that hold no lock, and a pause between batches lets a writer that
waited in SQLite's busy handler (which sleeps 1, 2, 5, 10, 15, 20 ... ms between tries) in.
bench/history.py measures the longest wait of a writer and a reader while 900,000 runs go.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from supervisor.db.engine import READ_OPTION
from supervisor.db.schema import TIMESTAMP_FORMAT
from supervisor.db.store import Store
from supervisor.states import FINAL_STATUSES

# A write transaction of the prune holds the lock about this long (the batch size adapts).
PRUNE_BATCH_BUDGET_SECONDS = 0.01
# Runs in the first batch, and the bounds the size adapts within.
PRUNE_BATCH_FIRST = 100
PRUNE_BATCH_MIN = 10
PRUNE_BATCH_MAX = 2000
# Between two batches the lock is free this long: at least the busy handler's gap between
# tries of a writer that started waiting within the last batch (10 ms at 8-18 ms of waiting).
PRUNE_PAUSE_SECONDS = 0.012
# Rows looked at by one read of candidates (a read transaction holds no lock).
PRUNE_SCAN_ROWS = 5000

_FINAL = "(" + ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATUSES)) + ")"
# SQL: a run that is not final yet depends on the run `runs.id`.
_NEEDED = (
    "EXISTS (SELECT 1 FROM run_dependencies d JOIN runs w ON w.id = d.run_id"
    f" WHERE d.depends_on = runs.id AND w.status NOT IN {_FINAL})"
)
# Candidates: a window of rows in rowid order; the caller keeps what ended before the cutoff.
_SCAN_SQL = (
    "SELECT rowid, id,"
    f" status IN {_FINAL} AND julianday(completed_at) < julianday(:cutoff)"
    " FROM runs WHERE rowid > :after ORDER BY rowid LIMIT :n"
)


@dataclass(frozen=True)
class Pruned:
    """One committed batch: the runs deleted and where their run directories were."""

    run_ids: tuple[str, ...]
    run_dirs: tuple[str | None, ...]
    events: int
    dependencies: int


@dataclass
class PruneResult:
    """What a prune did (or, dry, would do)."""

    runs: int = 0
    events: int = 0
    dependencies: int = 0
    kept_needed: int = 0  # ended before the cutoff, but a run not yet final depends on them
    batches: int = 0
    longest_batch_seconds: float = 0.0


def cutoff_text(cutoff: datetime) -> str:
    """A cutoff as the stored timestamp text (UTC)."""
    return cutoff.astimezone(UTC).replace(tzinfo=None).strftime(TIMESTAMP_FORMAT)


def prune(
    store: Store,
    ended_before: datetime,
    *,
    dry_run: bool = False,
    on_batch: Callable[[Pruned], None] | None = None,
    budget_seconds: float = PRUNE_BATCH_BUDGET_SECONDS,
    pause_seconds: float = PRUNE_PAUSE_SECONDS,
    keep_going: Callable[[], bool] | None = None,
) -> PruneResult:
    """Delete the final runs that ended before `ended_before` (with their events and
    dependency rows), batch by batch; `on_batch` is called after each commit. `dry_run`:
    count what would go, write nothing. `keep_going` is asked before each batch: False stops
    there (what was committed stays done)."""
    cutoff = cutoff_text(ended_before)
    result = PruneResult()
    size = PRUNE_BATCH_FIRST
    queue: list[str] = []

    def one_batch(ids: list[str]) -> None:
        nonlocal size
        if dry_run:
            with _reading(store) as conn:
                began = time.monotonic()
                pruned, kept = delete_batch(conn, ids, dry_run=True)
        else:
            with store.engine.begin() as conn:  # BEGIN IMMEDIATE: the lock, up front
                began = time.monotonic()  # from holding the lock to the commit
                pruned, kept = delete_batch(conn, ids)
        took = time.monotonic() - began
        result.runs += len(pruned.run_ids)
        result.events += pruned.events
        result.dependencies += pruned.dependencies
        result.kept_needed += kept
        result.batches += 1
        result.longest_batch_seconds = max(result.longest_batch_seconds, took)
        if on_batch is not None and pruned.run_ids:
            on_batch(pruned)
        # Aim the next batch at the budget: what this one cost per run, within bounds.
        if took > budget_seconds:
            size = max(PRUNE_BATCH_MIN, size // 2)
        elif took < budget_seconds / 2:
            size = min(PRUNE_BATCH_MAX, size * 2)
        if not dry_run and pause_seconds > 0:
            time.sleep(pause_seconds)

    def go_on() -> bool:
        return keep_going is None or keep_going()

    for ids in _candidates(store, cutoff):
        queue.extend(ids)
        while len(queue) >= size and go_on():
            take, queue = queue[:size], queue[size:]
            one_batch(take)
        if not go_on():
            return result
    while queue and go_on():
        take, queue = queue[:size], queue[size:]
        one_batch(take)
    return result


def _candidates(store: Store, cutoff: str) -> Iterator[list[str]]:
    """Ids of final runs that ended before `cutoff`, window by window in rowid order, each
    window read in its own short read transaction (no lock held)."""
    after = 0
    while True:
        with _reading(store) as conn:
            rows = conn.execute(
                text(_SCAN_SQL), {"after": after, "cutoff": cutoff, "n": PRUNE_SCAN_ROWS}
            ).all()
        if not rows:
            return
        after = int(rows[-1][0])
        yield [str(r[1]) for r in rows if r[2]]


def delete_batch(
    conn: Connection, run_ids: Sequence[str], *, dry_run: bool = False
) -> tuple[Pruned, int]:
    """In the caller's transaction: delete these runs if they are still final and no run not
    yet final depends on them (`dry_run`: count what would go). Returns the batch and how many
    were kept because a run still needs them. Plain driver SQL: SQLAlchemy's compiling of a
    few hundred bound values cost more than the deletes (profiled)."""
    if not run_ids:
        return Pruned((), (), 0, 0), 0
    rows = conn.exec_driver_sql(
        # `+status`: found by id; left to itself, the planner walks every final row through
        # the status index instead (measured: 20 ms a batch at 10,000 runs).
        f"SELECT id, run_dir, {_NEEDED} FROM runs"
        f" WHERE id IN ({_marks(run_ids)}) AND +status IN {_FINAL}",
        tuple(run_ids),
    ).all()
    doomed = [(str(r[0]), r[1]) for r in rows if not r[2]]
    kept = len(rows) - len(doomed)
    if not doomed:
        return Pruned((), (), 0, 0), kept
    ids = tuple(i for i, _ in doomed)
    marks = _marks(ids)
    if dry_run:
        count = "SELECT count(*) FROM {} WHERE {} IN ({})"
        n_events = int(
            conn.exec_driver_sql(count.format("run_events", "run_id", marks), ids).scalar() or 0
        )
        n_deps = sum(
            int(conn.exec_driver_sql(count.format("run_dependencies", c, marks), ids).scalar() or 0)
            for c in ("run_id", "depends_on")
        )
    else:
        delete = "DELETE FROM {} WHERE {} IN ({})"
        n_events = conn.exec_driver_sql(delete.format("run_events", "run_id", marks), ids).rowcount
        # Two statements, each through its own index (an OR may make SQLite scan).
        n_deps = sum(
            conn.exec_driver_sql(delete.format("run_dependencies", c, marks), ids).rowcount
            for c in ("run_id", "depends_on")
        )
        conn.exec_driver_sql(delete.format("runs", "id", marks), ids)
    pruned = Pruned(ids, tuple(None if d is None else str(d) for _, d in doomed), n_events, n_deps)
    return pruned, kept


def _marks(values: Sequence[str]) -> str:
    """`?, ?, ...`: one mark a value."""
    return ", ".join("?" * len(values))


@contextmanager
def _reading(store: Store) -> Iterator[Connection]:
    """A short read transaction (a deferred BEGIN: no lock is taken)."""
    with store.engine.connect() as plain:
        conn = plain.execution_options(**{READ_OPTION: True})
        with conn.begin():
            yield conn
