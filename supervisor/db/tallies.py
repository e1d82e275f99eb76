"""Metrics kept as runs finish (SPEC section 14): reading `run_tallies`, and counting an
attempt that ends without a final status (a retry).

The table is kept by triggers (migration 0006): each arrival at a final status counts once
under that status, with its duration; each start counts its queue wait; the `runs` rows are
the status gauge. So a scrape reads a few hundred rows whatever the history, and a counter
never goes down: a deleted or pruned row stays counted, an outcome corrected later counts
again under its new status.

A retried attempt (RUNNING -> PENDING, SPEC section 11) ended FAILED: the row never shows
that status, so no trigger sees it; the store counts it here, in the transaction that moves
the row (see `count_attempt_end`). A checkpointed attempt (SPEC section 15) is not a failure
and counts nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.db.stamps import TIMESTAMP_FORMAT

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Runs one SELECT (named parameters) and returns its rows: the readers here work on a
# SQLAlchemy connection and on plain sqlite3 (supervisor.db.quickread) alike.
Rows = Callable[[str, Mapping[str, object]], Sequence[Sequence[Any]]]

TABLE = "run_tallies"
# Bucket bounds of both histograms, in seconds: from a run that fails at once to a week.
# Fixed by migration 0006's triggers: changing them takes a migration.
TIME_BUCKETS_SECONDS: tuple[float, ...] = (
    1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 345600,
    604800,
)  # fmt: skip
# The `metric` column's values.
RUNS = "runs"  # a gauge: rows by status (template '')
FINISHED = "finished"  # (template, final status)
OUT_OF_MEMORY = "out_of_memory"  # (template)
DURATION = "duration"  # histogram by template: started_at..completed_at of each end
QUEUE_WAIT = "queue_wait"  # histogram by template: created_at..started_at of each start
# As the daemon writes it (SPEC section 6): a FAILED run killed for passing its memory cap.
OUT_OF_MEMORY_PREFIX = "out of memory"
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class AttemptEnd:
    """How a change that ends an attempt without a final status counts (a retry: FAILED)."""

    status: str
    out_of_memory: bool = False


@dataclass(frozen=True)
class Tally:
    """One row of run_tallies."""

    metric: str
    template: str
    status: str
    bucket: int
    count: int
    total: float


def read_tallies(rows: Rows) -> list[Tally]:
    """Every tally row (a few per template, status and bucket)."""
    query = f"SELECT metric, template, status, bucket, count, total FROM {TABLE}"
    return [
        Tally(str(m), str(t), str(s), int(b), int(n), float(v))
        for m, t, s, b, n, v in rows(query, {})
    ]


def _bucket(value: str, bounds: Sequence[float] = TIME_BUCKETS_SECONDS) -> str:
    """SQL: the index of the first bound `value` is <= (len(bounds): above all; NULL: NULL)."""
    whens = " ".join(f"WHEN {value} <= {float(b)!r} THEN {i}" for i, b in enumerate(bounds))
    return f"CASE WHEN {value} IS NULL THEN NULL {whens} ELSE {len(bounds)} END"


def _add_sql(metric: str, status: str, bucket: str, value: str) -> tuple[str, str]:
    """Two statements adding one to a tally of the run `:run_id` while it is `:expect`."""
    row = "FROM runs WHERE id = :run_id AND status = :expect"
    insert = (
        f"INSERT OR IGNORE INTO {TABLE} (metric, template, status, bucket, count, total)"
        f" SELECT '{metric}', template, {status}, b, 0, 0.0"
        f" FROM (SELECT template, {bucket} AS b {row}) WHERE b IS NOT NULL"
    )
    update = (
        f"UPDATE {TABLE} SET count = count + 1,"
        f" total = total + coalesce((SELECT {value} {row}), 0.0)"
        f" WHERE metric = '{metric}' AND status = {status}"
        f" AND template = (SELECT template {row}) AND bucket = (SELECT {bucket} {row})"
    )
    return insert, update


_SPAN = f"max((julianday(:at) - julianday(started_at)) * {SECONDS_PER_DAY!r}, 0.0)"
_ATTEMPT_END_SQL = (
    *_add_sql(FINISHED, ":status", "0", "0.0"),
    *_add_sql(DURATION, "''", f"(SELECT {_bucket('v')} FROM (SELECT {_SPAN} AS v))", _SPAN),
)
_ATTEMPT_OOM_SQL = _add_sql(OUT_OF_MEMORY, "''", "0", "0.0")


def count_attempt_end(
    conn: Connection, run_id: str, *, expect: str, ended: AttemptEnd, at: datetime
) -> None:
    """Count the end of the run's attempt as `ended` says (with its duration up to `at`), as a
    trigger counts a final status, if the row is `expect` now. Call it in the transaction that
    moves the row on, before the move (the attempt's started_at is read here)."""
    from sqlalchemy import text  # here: the readers of this module must not import it

    params = {
        "run_id": run_id,
        "expect": expect,
        "status": ended.status,
        "at": at.astimezone(UTC).replace(tzinfo=None).strftime(TIMESTAMP_FORMAT),
    }
    for statement in _ATTEMPT_END_SQL + (_ATTEMPT_OOM_SQL if ended.out_of_memory else ()):
        conn.execute(text(statement), params)
