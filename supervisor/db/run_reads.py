"""The runs' reads as plain functions of a connection: one run, lists of runs, their history,
and what the daemon looks for (the runs it answers for, foreign RUNNING rows, final statuses
another program wrote, cancel requests).

The Store opens the read transaction and calls these; nothing here owns a connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from supervisor.db.records import RunEvent, RunRecord, record_of
from supervisor.db.schema import (
    CANCEL_INDEX_NAME,
    CANCEL_REQUESTED_SQL,
    UNCONFIRMED_INDEX_NAME,
    UNCONFIRMED_SQL,
    run_events,
    runs,
)
from supervisor.states import FINAL_STATUSES, RunStatus


def find_run(conn: Connection, run_id: str) -> RunRecord | None:
    """The run with this id, or None."""
    row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
    return None if row is None else record_of(row)


def list_runs(
    conn: Connection,
    status: str | None = None,
    limit: int | None = None,
    sweep_id: str | None = None,
) -> list[RunRecord]:
    """Runs, newest first, optionally of one status and of one sweep."""
    query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id)
    if status is not None:
        query = query.where(runs.c.status == status)
    if sweep_id is not None:
        query = query.where(runs.c.sweep_id == sweep_id)
    if limit is not None:
        query = query.limit(limit)
    return _records(conn, query)


def get_many(conn: Connection, run_ids: Sequence[str]) -> list[RunRecord]:
    """The runs with these ids (missing ones are left out)."""
    if not run_ids:
        return []
    return _records(conn, select(runs).where(runs.c.id.in_(list(run_ids))))


def events(conn: Connection, run_id: str) -> list[RunEvent]:
    """A run's status history, oldest first."""
    query = select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id)
    return [
        RunEvent(
            id=int(r.id),
            run_id=str(r.run_id),
            at=r.at,
            from_status=r.from_status,
            to_status=str(r.to_status),
            reason=r.reason,
        )
        for r in conn.execute(query)
    ]


def count_status(conn: Connection, status: RunStatus) -> int:
    """How many runs have this status."""
    query = select(func.count()).select_from(runs).where(runs.c.status == status.value)
    return int(conn.execute(query).scalar() or 0)


def counts(conn: Connection) -> dict[str, int]:
    """How many runs there are of each status."""
    query = select(runs.c.status, func.count()).group_by(runs.c.status)
    return {str(status): int(n) for status, n in conn.execute(query)}


def last_event_id(conn: Connection) -> int:
    """The newest run_events id (0 when there is none)."""
    return int(conn.execute(select(func.max(run_events.c.id))).scalar() or 0)


# -- what the daemon looks for ------------------------------------------------


def active_runs(conn: Connection) -> list[RunRecord]:
    """Runs the daemon is responsible for: RUNNING, or PENDING and claimed for launch."""
    query = select(runs).where(
        (runs.c.status == RunStatus.RUNNING.value)
        | ((runs.c.status == RunStatus.PENDING.value) & runs.c.launch_claimed_at.is_not(None))
    )
    return _records(conn, query)


def foreign_running(conn: Connection) -> list[RunRecord]:
    """RUNNING rows the daemon did not start: another program wrote their pid and pgid
    (the daemon's own RUNNING rows always carry their keeper's pid)."""
    query = select(runs).where(
        runs.c.status == RunStatus.RUNNING.value, runs.c.keeper_pid.is_(None)
    )
    return _records(conn, query)


def overturned_runs(conn: Connection, boot_id: str) -> list[RunRecord]:
    """Runs the daemon started in this boot whose final status another program wrote: the
    row is final, but its last run_events row (every status change of ours has one) is not
    that status. Their processes may still live; their true outcome is still to come."""
    # Read through the partial index of rows whose final status no event has said (kept by
    # triggers, migration 0007): a walk of every final row of this boot took seconds at
    # 100,000 runs.
    final = ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATUSES))
    query = (
        text(
            f"SELECT * FROM runs INDEXED BY {UNCONFIRMED_INDEX_NAME} WHERE {UNCONFIRMED_SQL}"
            f" AND status IN ({final}) AND keeper_pid IS NOT NULL AND keeper_pid != 0"
            " AND boot_id = :boot_id AND coalesce((SELECT e.to_status FROM run_events AS e"
            " WHERE e.run_id = runs.id ORDER BY e.id DESC LIMIT 1), '') != status"
        )
        .bindparams(boot_id=boot_id)
        .columns(*runs.c)
    )
    return _records(conn, query)


def cancel_requests(conn: Connection) -> list[RunRecord]:
    """PENDING or RUNNING runs somebody asked to cancel (read through a partial index)."""
    # INDEXED BY: without ANALYZE statistics the planner prefers the status index, which
    # walks every waiting run.
    query = text(
        f"SELECT * FROM runs INDEXED BY {CANCEL_INDEX_NAME} WHERE {CANCEL_REQUESTED_SQL}"
    ).columns(*runs.c)
    return _records(conn, query)


def _records(conn: Connection, query: Any) -> list[RunRecord]:
    """The runs a SELECT of whole rows returns, as records."""
    return [record_of(r) for r in conn.execute(query)]
