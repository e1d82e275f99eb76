"""The tables, as SQLAlchemy Core metadata (the migrations are the DDL's truth)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    func,
    literal_column,
    text,
)

from supervisor.db.stamps import TIMESTAMP_FORMAT as TIMESTAMP_FORMAT  # re-exported


class UTCDateTime(TypeDecorator[datetime]):
    """UTC timestamps stored as SQLAlchemy's SQLite text; lenient when reading foreign rows."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        """Aware datetimes are converted to UTC; naive ones are taken as UTC."""
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime(TIMESTAMP_FORMAT)

    def process_result_value(self, value: object, dialect: Dialect) -> datetime | None:
        """Another program may have written any text here: garbage reads as None, never raises."""
        return parse_timestamp(value)


def parse_timestamp(value: object) -> datetime | None:
    """An aware UTC datetime from the forms other programs write, or None."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    # The original 15 columns (SPEC section 3).
    Column("id", String(12), primary_key=True),
    Column("name", String(255), nullable=True),
    Column("status", String(20), nullable=False, index=True),
    Column("config_json", Text, nullable=False),
    Column("template", String(100), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("pgid", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("current_erlang", Float, nullable=True),
    Column("total_erlangs", Integer, nullable=True),
    Column("current_iteration", Integer, nullable=True),
    Column("total_iterations", Integer, nullable=True),
    # Added by SPEC section 3.
    Column("exit_code", Integer, nullable=True),
    Column("exit_signal", Integer, nullable=True),
    Column("cancel_requested_at", UTCDateTime, nullable=True),
    Column("progress_updated_at", UTCDateTime, nullable=True),
    Column("run_dir", Text, nullable=True),
    # Added by SPEC sections 9 to 11 (executors, resources, the queue).
    Column("priority", Integer, nullable=True),
    Column("not_before", UTCDateTime, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("sweep_id", String(12), nullable=True),
    Column("executor", String(100), nullable=True),
    Column("external_id", Text, nullable=True),
    Column("host", Text, nullable=True),
    Column("cpus", Integer, nullable=True),
    Column("gpu_ids", Text, nullable=True),
    Column("memory_max_bytes", Integer, nullable=True),
    Column("peak_memory_bytes", Integer, nullable=True),
    # Ours: what a restarted daemon needs to find a run again and settle it truthfully.
    Column("launch_claimed_at", UTCDateTime, nullable=True),
    Column("boot_id", String(36), nullable=True),
    Column("pid_start_ticks", Integer, nullable=True),
    Column("keeper_pid", Integer, nullable=True),
    Column("keeper_start_ticks", Integer, nullable=True),
    Column("timed_out_at", UTCDateTime, nullable=True),
    Column("erlang_index", Integer, nullable=True),
    Column("progress_offset", Integer, nullable=True),
    Column("progress_bad_lines", Integer, nullable=True),
    Column("hook_done_at", UTCDateTime, nullable=True),  # the run's on_finish hook has run
    Column("output_offset", Integer, nullable=True),  # progress_patterns read up to here
    # 1 while the final status has no run_events row saying it (kept by triggers, 0007).
    Column("final_unconfirmed", Integer, nullable=True),
)

# The queue's order (SPEC section 11): highest priority first (NULL means 0), then oldest.
# The literal 0 is rendered into the SQL, not bound, so that it matches the index below.
QUEUE_PRIORITY = func.coalesce(runs.c.priority, literal_column("0"))
QUEUE_ORDER = (QUEUE_PRIORITY.desc(), runs.c.created_at, runs.c.id)

# The pickup query (`status = ?` ORDER BY QUEUE_ORDER LIMIT n) walks this index from the
# first PENDING entry in queue order and stops after n usable rows: no sort of every PENDING
# row, however many wait. Status leads, as an equality: a partial index (WHERE status =
# 'PENDING') is skipped by SQLite's planner for a bound `status = ?` and loses to
# ix_runs_status without ANALYZE statistics (measured), so this one covers every row.
queue_index = Index(
    "ix_runs_queue", runs.c.status, QUEUE_PRIORITY.desc(), runs.c.created_at, runs.c.id
)

# The daemon looks for cancel requests on every pass: this index holds only the rows that ask,
# so the look costs nothing however many runs wait. The query repeats the predicate literally
# (a bound parameter would keep SQLite's planner from using a partial index).
CANCEL_REQUESTED_SQL = "cancel_requested_at IS NOT NULL AND status IN ('PENDING', 'RUNNING')"
CANCEL_INDEX_NAME = "ix_runs_cancel_requested"
cancel_index = Index(CANCEL_INDEX_NAME, runs.c.id, sqlite_where=text(CANCEL_REQUESTED_SQL))

# Rows of a final status another program wrote (no run_events row says it): the candidates of
# Store.overturned_runs, read through this partial index instead of every final row.
UNCONFIRMED_SQL = "final_unconfirmed IS NOT NULL"
UNCONFIRMED_INDEX_NAME = "ix_runs_final_unconfirmed"
unconfirmed_index = Index(UNCONFIRMED_INDEX_NAME, runs.c.id, sqlite_where=text(UNCONFIRMED_SQL))
# Final runs whose on_finish hook has not run: the catch-up at start reads a week's ends
# through ix_runs_completed_at.
UNHOOKED_SQL = "hook_done_at IS NULL"
UNHOOKED_INDEX_NAME = "ix_runs_completed_at"
# A long history read in bounded time (migration 0005): the newest runs (`runsup results`), the
# runs that ended last (`runsup list`), the runs of one sweep.
created_index = Index("ix_runs_created_at", runs.c.created_at)
completed_index = Index(UNHOOKED_INDEX_NAME, runs.c.completed_at)
sweep_index = Index("ix_runs_sweep_id", runs.c.sweep_id)

run_events = Table(
    "run_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(12), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("from_status", String(20), nullable=True),
    Column("to_status", String(20), nullable=False),
    Column("reason", Text, nullable=True),
    Index("ix_run_events_run_id", "run_id"),
)

# SPEC section 11: a run waits until every run it depends on is final.
run_dependencies = Table(
    "run_dependencies",
    metadata,
    Column("run_id", String(12), nullable=False),
    Column("depends_on", String(12), nullable=False),
    Column("kind", String(20), nullable=True),  # afterok or afterany; NULL means afterok
    PrimaryKeyConstraint("run_id", "depends_on"),
    # A run that ends looks up its dependents by this column.
    Index("ix_run_dependencies_depends_on", "depends_on"),
)

# SPEC section 11: scope `*` pauses the whole queue, a template name that template's runs.
queue_pauses = Table(
    "queue_pauses",
    metadata,
    Column("scope", String(100), primary_key=True),
    Column("paused_at", UTCDateTime, nullable=True),
    Column("reason", Text, nullable=True),
)

# SPEC section 14: counters and histograms kept as runs finish (supervisor.db.tallies), by
# triggers of migration 0006; `runs` rows are a gauge of rows by status.
run_tallies = Table(
    "run_tallies",
    metadata,
    Column("metric", String(20), nullable=False),
    Column("template", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("bucket", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("total", Float, nullable=False),
    PrimaryKeyConstraint("metric", "template", "status", "bucket"),
)
