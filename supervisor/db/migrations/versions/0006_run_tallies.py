"""Metrics kept as runs finish (SPEC section 14): the `run_tallies` table and its triggers.

A scrape used to count every row of `runs` (6 s at a million rows); it now reads this small
table, O(templates x statuses x buckets) rows. Triggers keep it, in the same commit as the
status change, whoever writes: the daemon, a GUI that writes a final status itself, a program
inserting rows. Counters only ever go up (a deleted row stays counted: there is no trigger on
DELETE for them); `runs` (the status gauge) follows the rows, deletes included.

Existing rows are counted once here, as a full count of them gives.

A later migration that rebuilds `runs` (a batch "move and copy") drops these triggers with the
old table: it must create them again (`create_triggers()` of this file's SQL, frozen).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As supervisor.db.tallies when this revision was written (a test compares them).
TABLE = "run_tallies"
TIME_BUCKETS_SECONDS: tuple[float, ...] = (
    1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 345600,
    604800,
)  # fmt: skip
FINAL_SQL = "('CANCELLED', 'COMPLETED', 'FAILED')"
OUT_OF_MEMORY_PREFIX = "out of memory"
SECONDS_PER_DAY = 86400.0


def _bucket(value: str) -> str:
    """SQL: the index of the first bound `value` is <= (len(bounds): above all; NULL: NULL)."""
    whens = " ".join(
        f"WHEN {value} <= {float(b)!r} THEN {i}" for i, b in enumerate(TIME_BUCKETS_SECONDS)
    )
    return f"CASE WHEN {value} IS NULL THEN NULL {whens} ELSE {len(TIME_BUCKETS_SECONDS)} END"


def _span(start: str, end: str) -> str:
    """SQL: seconds from `start` to `end` (never negative; NULL if either is not a time)."""
    return f"max((julianday({end}) - julianday({start})) * {SECONDS_PER_DAY!r}, 0.0)"


def _add(metric: str, template: str, status: str, bucket: str = "0", value: str = "0.0") -> str:
    """SQL statements: one more in a tally row (made at 0 first). Plain INSERT OR IGNORE and
    UPDATE, no UPSERT: every program opening the file parses these triggers, whatever its
    SQLite's age. A NULL `bucket` adds nothing."""
    key = (
        f"metric = '{metric}' AND template = {template} AND status = {status} AND bucket = {bucket}"
    )
    return (
        f"INSERT OR IGNORE INTO {TABLE} (metric, template, status, bucket, count, total)"
        f" SELECT '{metric}', {template}, {status}, b, 0, 0.0"
        f" FROM (SELECT {bucket} AS b) WHERE b IS NOT NULL;\n"
        f"  UPDATE {TABLE} SET count = count + 1, total = total + coalesce({value}, 0.0)"
        f" WHERE {key};\n"
    )


def _histogram(metric: str, span: str) -> str:
    bucket = f"(SELECT {_bucket('v')} FROM (SELECT {span} AS v))"
    return _add(metric, "NEW.template", "''", bucket, span)


def _final_body() -> str:
    oom = (
        f"NEW.status = 'FAILED' AND substr(NEW.error_message, 1, {len(OUT_OF_MEMORY_PREFIX)})"
        f" = '{OUT_OF_MEMORY_PREFIX}'"
    )
    return (
        _add("finished", "NEW.template", "NEW.status")
        + _add("out_of_memory", "NEW.template", "''", f"(CASE WHEN {oom} THEN 0 END)")
        + _histogram("duration", _span("NEW.started_at", "NEW.completed_at"))
    )


def _start_body() -> str:
    return _histogram("queue_wait", _span("NEW.created_at", "NEW.started_at"))


def _triggers() -> dict[str, str]:
    """Trigger name -> its CREATE TRIGGER statement."""
    final = f"NEW.status IN {FINAL_SQL}"
    gauge_down = (
        f"  UPDATE {TABLE} SET count = count - 1"
        " WHERE metric = 'runs' AND template = '' AND status = OLD.status AND bucket = 0;\n"
    )
    bodies = {
        # The status gauge follows the rows.
        "tally_runs_insert": ("AFTER INSERT ON runs", _add("runs", "''", "NEW.status")),
        "tally_runs_delete": ("AFTER DELETE ON runs", gauge_down),
        "tally_runs_status": (
            "AFTER UPDATE OF status ON runs WHEN NEW.status IS NOT OLD.status",
            gauge_down + _add("runs", "''", "NEW.status"),
        ),
        # Counters and the duration histogram: each arrival at a final status, once.
        "tally_final_insert": (f"AFTER INSERT ON runs WHEN {final}", _final_body()),
        "tally_final_update": (
            f"AFTER UPDATE OF status ON runs WHEN {final} AND NEW.status IS NOT OLD.status",
            _final_body(),
        ),
        # The queue-wait histogram: each start of an attempt, once.
        "tally_start_insert": (
            "AFTER INSERT ON runs WHEN NEW.started_at IS NOT NULL",
            _start_body(),
        ),
        "tally_start_update": (
            "AFTER UPDATE OF started_at ON runs"
            " WHEN NEW.started_at IS NOT NULL AND NEW.started_at IS NOT OLD.started_at",
            _start_body(),
        ),
    }
    return {
        name: f"CREATE TRIGGER {name} {when}\nBEGIN\n  {body}END"
        for name, (when, body) in bodies.items()
    }


TRIGGERS = _triggers()


def create_triggers() -> None:
    """Create every trigger of this revision."""
    for statement in TRIGGERS.values():
        op.execute(statement)


def _backfill_histogram(metric: str, span: str, where: str) -> str:
    return (
        f"INSERT INTO {TABLE} (metric, template, status, bucket, count, total)"
        f" SELECT '{metric}', template, '', k, count(*), total(v)"
        f" FROM (SELECT template, v, {_bucket('v')} AS k"
        f"  FROM (SELECT template, {span} AS v FROM runs WHERE {where} LIMIT -1) LIMIT -1)"
        " WHERE k IS NOT NULL GROUP BY template, k"
    )


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("metric", sa.String(20), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "template", "status", "bucket"),
    )
    # What is there now, counted once (the triggers count what comes after, in the same
    # transaction: nothing is missed or counted twice).
    oom = f"status = 'FAILED' AND substr(error_message, 1, {len(OUT_OF_MEMORY_PREFIX)})"
    for statement in (
        f"INSERT INTO {TABLE} SELECT 'runs', '', status, 0, count(*), 0.0"
        " FROM runs GROUP BY status",
        f"INSERT INTO {TABLE} SELECT 'finished', template, status, 0, count(*), 0.0"
        f" FROM runs WHERE status IN {FINAL_SQL} GROUP BY template, status",
        f"INSERT INTO {TABLE} SELECT 'out_of_memory', template, '', 0, count(*), 0.0"
        f" FROM runs WHERE {oom} = '{OUT_OF_MEMORY_PREFIX}' GROUP BY template",
        _backfill_histogram(
            "duration", _span("started_at", "completed_at"), f"status IN {FINAL_SQL}"
        ),
        _backfill_histogram(
            "queue_wait", _span("created_at", "started_at"), "started_at IS NOT NULL"
        ),
    ):
        op.execute(statement)
    create_triggers()


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table(TABLE)
