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
    String,
    Table,
    Text,
    TypeDecorator,
)

# SQLAlchemy's own SQLite text form, so programs written for the original schema read ours.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


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
)

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
