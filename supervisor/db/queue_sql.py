"""The queue's SQL (SPEC section 11) as plain functions of a connection: what may start, what
waits on what, and the cheap markers that tell the queue something moved.

The Store opens the read transaction and calls these; nothing here owns a connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, delete, func, insert, literal, or_, select, text
from sqlalchemy.engine import Connection

from supervisor.db.records import Dependency, Pause, RunRecord, record_of
from supervisor.db.schema import (
    QUEUE_ORDER,
    TIMESTAMP_FORMAT,
    UNHOOKED_INDEX_NAME,
    UNHOOKED_SQL,
    queue_pauses,
    run_dependencies,
    run_events,
    runs,
)
from supervisor.errors import ValidationError
from supervisor.states import FINAL_STATUSES, RunStatus

# run_dependencies.kind (SPEC section 11); NULL, and any other value, reads as afterok.
AFTER_OK = "afterok"
AFTER_ANY = "afterany"
QUEUE_ALL = "*"  # the queue_pauses scope that holds every run


def dependency_kinds(after: Sequence[str], after_any: Sequence[str]) -> dict[str, str]:
    """Depended-on run id -> kind; ValidationError for a run named as both."""
    deps = dict.fromkeys(after, AFTER_OK)
    for dep in after_any:
        if deps.get(dep) == AFTER_OK:
            raise ValidationError(f"run {dep} is named by both --after and --after-any")
        deps[dep] = AFTER_ANY
    return deps


def check_dependencies_exist(conn: Connection, deps: Mapping[str, str]) -> None:
    """ValidationError unless every depended-on run exists."""
    if not deps:
        return
    found = set(conn.execute(select(runs.c.id).where(runs.c.id.in_(list(deps)))).scalars())
    missing = sorted(set(deps) - found)
    if missing:
        raise ValidationError(f"no run with id {', '.join(missing)} to depend on")


def pending_runs(
    conn: Connection,
    limit: int,
    *,
    now: datetime,
    skip_templates: Iterable[str] = (),
    room: Mapping[str, int] | None = None,
) -> list[RunRecord]:
    """Up to `limit` unclaimed PENDING runs that may start at `now`, in queue order.

    Queue order is highest priority (NULL = 0) then oldest; a run waits while its
    `not_before` is in the future, while a run it depends on is not final (or, for afterok,
    not COMPLETED), and while its template is in `skip_templates` (paused or full).
    `room` bounds how many runs of a template are returned. The walk follows ix_runs_queue
    and stops after `limit` usable rows (no sort of every PENDING row).
    """
    query = (
        select(runs)
        .where(
            runs.c.status == RunStatus.PENDING.value,
            runs.c.launch_claimed_at.is_(None),
            or_(runs.c.not_before.is_(None), _instant(runs.c.not_before) <= _day_of(now)),
            ~_unmet_dependency().exists(),
        )
        .order_by(*QUEUE_ORDER)
    )
    skipped = sorted(set(skip_templates))
    if skipped:
        query = query.where(runs.c.template.not_in(skipped))
    left = dict(room or {})
    picked: list[RunRecord] = []
    for row in conn.execute(query):  # rows are fetched as the walk goes on
        record = record_of(row)
        if record.template in left:
            if left[record.template] <= 0:
                continue
            left[record.template] -= 1
        picked.append(record)
        if len(picked) >= limit:
            break
    return picked


def running_templates(conn: Connection) -> dict[str, str]:
    """Run id -> template of every RUNNING run (for max_concurrent)."""
    query = select(runs.c.id, runs.c.template).where(runs.c.status == RunStatus.RUNNING.value)
    return {str(i): str(t) for i, t in conn.execute(query)}


# The dependencies of PENDING runs, found from those runs (the status index), never by a walk
# of run_dependencies, which keeps every edge ever made (issue 23). CROSS JOIN makes SQLite
# keep that order; each dependency's status is a primary-key lookup.
_PENDING_EDGES_SQL = (
    "SELECT d.run_id, d.depends_on, d.kind,"
    " (SELECT o.status FROM runs AS o WHERE o.id = d.depends_on) AS status"
    " FROM runs AS w CROSS JOIN run_dependencies AS d ON d.run_id = w.id"
    " WHERE w.status = 'PENDING'"
)
_DOOMED_SQL = (
    f"SELECT run_id, depends_on, kind, status FROM ({_PENDING_EDGES_SQL}"
    " AND w.launch_claimed_at IS NULL)"
    f" WHERE status IS NULL OR (coalesce(kind, '{AFTER_OK}') != '{AFTER_ANY}'"
    " AND status IN ('FAILED', 'CANCELLED'))"
    " ORDER BY run_id, depends_on"
)
_CYCLE_EDGES_SQL = f"SELECT run_id, depends_on FROM ({_PENDING_EDGES_SQL}) WHERE status = 'PENDING'"


def doomed_dependents(conn: Connection) -> list[Dependency]:
    """Dependencies that can never be met by unclaimed PENDING runs: an afterok on a run
    that ended FAILED or CANCELLED, or on a run that does not exist."""
    return [_dependency(r) for r in conn.execute(text(_DOOMED_SQL))]


def pending_dependency_edges(conn: Connection) -> list[tuple[str, str]]:
    """(run, depends_on) where both are PENDING: where a dependency cycle can hide."""
    return [(str(a), str(b)) for a, b in conn.execute(text(_CYCLE_EDGES_SQL))]


def dependency_marker(conn: Connection) -> int:
    """The highest rowid of run_dependencies: grows when another program adds some (a lookup
    at the end of the table; a count would walk every edge ever made). Should a prune delete
    the newest edges and new ones reuse their rowids, the 30 s full look still finds them."""
    query = text("SELECT coalesce(max(rowid), 0) FROM run_dependencies")
    return int(conn.execute(query).scalar() or 0)


def have_dependents(conn: Connection, run_ids: Sequence[str]) -> bool:
    """True if any run depends on one of these."""
    d = run_dependencies
    query = select(d.c.run_id).where(d.c.depends_on.in_(list(run_ids))).limit(1)
    return conn.execute(query).first() is not None


def dependencies_of(conn: Connection, run_id: str) -> list[Dependency]:
    """What a run waits for, with each dependency's status now."""
    dep = runs.alias("dep")
    d = run_dependencies
    query = (
        select(d.c.run_id, d.c.depends_on, d.c.kind, dep.c.status)
        .select_from(d.outerjoin(dep, dep.c.id == d.c.depends_on))
        .where(d.c.run_id == run_id)
        .order_by(d.c.depends_on)
    )
    return [_dependency(r) for r in conn.execute(query)]


def pauses(conn: Connection) -> list[Pause]:
    """Every queue_pauses row, `*` first."""
    query = select(queue_pauses).order_by(queue_pauses.c.scope != QUEUE_ALL, queue_pauses.c.scope)
    return [
        Pause(scope=str(r.scope), paused_at=r.paused_at, reason=r.reason)
        for r in conn.execute(query)
    ]


def add_pause(conn: Connection, scope: str, reason: str | None, now: datetime) -> bool:
    """Pause `scope` (`*` or a template) as of `now`; False if it was paused already."""
    found = conn.execute(select(queue_pauses.c.scope).where(queue_pauses.c.scope == scope)).first()
    if found is not None:
        return False
    conn.execute(insert(queue_pauses).values(scope=scope, paused_at=now, reason=reason))
    return True


def remove_pause(conn: Connection, scope: str) -> bool:
    """Unpause `scope`; False if it was not paused."""
    result = conn.execute(delete(queue_pauses).where(queue_pauses.c.scope == scope))
    return int(result.rowcount) > 0


def final_events_since(conn: Connection, after_id: int) -> tuple[list[str], int]:
    """Runs that reached a final status in run_events rows after `after_id`; the new cursor."""
    query = (
        select(run_events.c.id, run_events.c.run_id)
        .where(
            run_events.c.id > after_id,
            run_events.c.to_status.in_([s.value for s in FINAL_STATUSES]),
        )
        .order_by(run_events.c.id)
    )
    rows = list(conn.execute(query))
    last = conn.execute(select(func.max(run_events.c.id))).scalar()
    ids = list(dict.fromkeys(str(r.run_id) for r in rows))
    return ids, max(int(last or 0), after_id)


def queue_marker(conn: Connection) -> tuple[int, int]:
    """Changes whenever a run may have become startable: (PRAGMA data_version, which moves
    with every other program's commit; the newest run_events id that is not a start)."""
    version = 0
    if conn.dialect.name == "sqlite":
        version = int(conn.exec_driver_sql("PRAGMA data_version").scalar() or 0)
    newest = conn.execute(
        select(run_events.c.id)
        .where(run_events.c.to_status != RunStatus.RUNNING.value)
        .order_by(run_events.c.id.desc())
        .limit(1)
    ).scalar()
    return version, int(newest or 0)


def next_not_before(conn: Connection, now: datetime) -> datetime | None:
    """The earliest not_before still to come of an unclaimed PENDING run, if any."""
    query = (
        select(runs.c.not_before)
        .where(
            runs.c.status == RunStatus.PENDING.value,
            runs.c.launch_claimed_at.is_(None),
            _instant(runs.c.not_before) > _day_of(now),
        )
        .order_by(_instant(runs.c.not_before))
        .limit(1)
    )
    # The column's type reads the text as the same instant (microseconds kept, unlike days).
    found: datetime | None = conn.execute(query).scalar()
    return found


def unhooked_runs(
    conn: Connection, templates: Iterable[str] | None, since: datetime
) -> list[RunRecord]:
    """Final runs whose on_finish hook has not run, ended after `since`, of these templates
    (None: any). Read through ix_runs_completed_at: the last week's ends, never
    every final row (the status index walked them all: 37 s at 100,000 runs under load)."""
    final = ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATUSES))
    sql = (
        f"SELECT * FROM runs INDEXED BY {UNHOOKED_INDEX_NAME} WHERE {UNHOOKED_SQL}"
        f" AND completed_at >= :since AND status IN ({final})"
    )
    params: dict[str, Any] = {"since": since.astimezone(UTC).strftime(TIMESTAMP_FORMAT)}
    query = text(sql)
    if templates is not None:
        query = text(sql + " AND template IN :templates").bindparams(
            bindparam("templates", expanding=True)
        )
        params["templates"] = sorted(templates)
    return [record_of(r) for r in conn.execute(query.columns(*runs.c), params)]


def _instant(column: Any) -> Any:
    """SQL: a DATETIME column as the instant it means, in (Julian) days.

    SPEC section 3: other programs may write ISO 8601 with a `T` or a UTC offset
    (`...T10:00:00+01:00`), which must compare as the instant, never as text; SQLite's date
    functions read all these forms (and give NULL for text that is no time, which never starts
    and is never waited for).
    """
    return func.julianday(column)


def _day_of(moment: datetime) -> Any:
    """SQL: a datetime (naive means UTC) in the days `_instant` compares in."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return func.julianday(utc.strftime(TIMESTAMP_FORMAT))


def _status_of(run_id: Any) -> Any:
    """SQL: the status of the run with this id (NULL if none), one primary-key lookup.

    A scalar subquery, not a join: joined twice to `runs` by status, SQLite's planner walked
    the status index of both (10,000 x 10,000 probes, 23 s with 10,000 PENDING rows).
    """
    other = runs.alias("other")
    return select(other.c.status).where(other.c.id == run_id).scalar_subquery()


def _is_unclaimed_pending(run_id: Any) -> Any:
    """SQL: the run with this id is PENDING and not claimed for launch."""
    other = runs.alias("waiting")
    return (
        select(literal(1))
        .where(
            other.c.id == run_id,
            other.c.status == RunStatus.PENDING.value,
            other.c.launch_claimed_at.is_(None),
        )
        .exists()
    )


def _is_after_ok(kind: Any) -> Any:
    """SQL: the dependency needs COMPLETED (afterok; NULL or any unknown kind reads so)."""
    return func.coalesce(kind, AFTER_OK) != AFTER_ANY


def _unmet_dependency() -> Any:
    """SQL: a dependency of the outer `runs` row that is not met yet (or never will be)."""
    dep = runs.alias("dep")
    d = run_dependencies
    return (
        select(literal(1))
        .select_from(d.outerjoin(dep, dep.c.id == d.c.depends_on))
        .where(
            d.c.run_id == runs.c.id,
            or_(
                dep.c.id.is_(None),
                and_(_is_after_ok(d.c.kind), dep.c.status != RunStatus.COMPLETED.value),
                dep.c.status.not_in([s.value for s in FINAL_STATUSES]),
            ),
        )
    )


def _dependency(row: Row[Any, Any, Any, Any]) -> Dependency:
    kind = AFTER_ANY if row.kind == AFTER_ANY else AFTER_OK
    status = None if row.status is None else str(row.status)
    return Dependency(str(row.run_id), str(row.depends_on), kind, status)
