"""What any program may do with the database (SPEC section 3), for the Python client and the
commands that only read: never creates a database, never migrates one, and writes only what
section 3 lets other programs write (PENDING rows with their dependencies, cancel requests).

The daemon's own store (supervisor.db.store) also logs a `run_events` row for each submission;
another program may not write that table, so this one does not: the run's history starts with
the daemon's first status change, as for a row any GUI inserts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, literal_column, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from supervisor.db.migrate import HEAD_REVISION, current_revision
from supervisor.db.queue_sql import check_dependencies_exist, dependency_kinds
from supervisor.db.records import (
    NewRun,
    RunRecord,
    check_config_json,
    new_run_id,
    record_of,
    utcnow,
)
from supervisor.db.schema import run_dependencies, runs
from supervisor.db.store import WRITE_ATTEMPTS, Store
from supervisor.errors import DatabaseError, NotFoundError, ValidationError
from supervisor.states import FINAL_STATUSES, RunStatus

# `runsup list` without --all: the runs that ended last, besides every waiting or running one.
RECENT_ENDED_RUNS = 20
_ACTIVE = (RunStatus.PENDING.value, RunStatus.RUNNING.value)

Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


@dataclass(frozen=True)
class BoundedList:
    """What `runsup list` shows by default: the runs, and how many more there are."""

    runs: list[RunRecord]
    more: int


def missing_database_message(path: Path) -> str:
    """What a reader says about a database that is not there (it never creates one)."""
    return (
        f"no database at {path} (nothing has been submitted to it yet; "
        "`runsup daemon` or `runsup db upgrade` creates it)"
    )


class ClientStore:
    """The database as another program sees it: short reads, section 3's writes, a change probe.

    Keeps one connection of its own for `data_version()`: SQLite's change counter moves when
    *another* connection commits, so it must be read on the same connection every time.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._probe: Any = None

    @classmethod
    def open(cls, url: str, path: Path | None) -> ClientStore:
        """Open an existing database at `url` (file `path`); never creates or upgrades it."""
        if path is not None and not path.exists():
            raise NotFoundError(missing_database_message(path))
        store = Store.open(url, upgrade=False)
        try:
            with store._read() as conn:
                revision = current_revision(conn)
        except DBAPIError as exc:
            store.close()
            raise DatabaseError(f"cannot read database {url}: {exc.orig}") from None
        if revision is None or revision < HEAD_REVISION:
            store.close()
            where = path if path is not None else url
            have = "no runsup schema" if revision is None else f"schema revision {revision}"
            raise DatabaseError(
                f"database {where} has {have}; this version needs {HEAD_REVISION}: "
                "run `runsup db upgrade` (the daemon also does it when it starts)"
            )
        return cls(store)

    def close(self) -> None:
        """Release the probe connection and every pooled one."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self.store.close()

    # -- the change probe ------------------------------------------------------

    def data_version(self) -> int:
        """SQLite's PRAGMA data_version on this store's own probe connection: it changes
        whenever another connection (any process, or this store's other connections) commits."""
        if self._probe is None:
            self._probe = self.store.engine.raw_connection()
        cursor = self._probe.cursor()
        try:
            cursor.execute("PRAGMA data_version")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return int(row[0]) if row else 0

    def install_authorizer(self, authorizer: Authorizer) -> None:
        """Have SQLite ask `authorizer` about every statement this store prepares from now on
        (sqlite3's set_authorizer): for audits of what the client writes. Drops pooled
        connections so that each one is made again with it."""
        from sqlalchemy import event

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            if isinstance(dbapi_connection, sqlite3.Connection):
                dbapi_connection.set_authorizer(authorizer)

        event.listen(self.store.engine, "connect", on_connect)
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self.store.engine.dispose()

    # -- reads -----------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        """The run with this id; NotFoundError if there is none."""
        return self.store.get(run_id)

    def get_many(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """The runs with these ids, in the order given (missing ones left out)."""
        ids = list(dict.fromkeys(run_ids))
        by_id = {r.id: r for r in self.store.get_many(ids)}
        return [by_id[i] for i in ids if i in by_id]

    def sweep_runs(self, sweep_id: str, status: str | None = None) -> list[RunRecord]:
        """The runs of a sweep, oldest first (the order they were submitted in)."""
        query = select(runs).where(runs.c.sweep_id == sweep_id)
        if status is not None:
            query = query.where(runs.c.status == status)
        # rowid: the insertion order, for runs of one sweep that share a created_at.
        query = query.order_by(runs.c.created_at, literal_column("runs.rowid"))
        with self.store._read() as conn:
            return [record_of(r) for r in conn.execute(query)]

    def recent_runs(self, limit: int, status: str | None = None) -> tuple[list[RunRecord], int]:
        """The `limit` newest runs (newest first) and how many others there are."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)
        count = select(func.count()).select_from(runs)
        if status is not None:
            query = query.where(runs.c.status == status)
            count = count.where(runs.c.status == status)
        with self.store._read() as conn:
            found = [record_of(r) for r in conn.execute(query)]
            total = int(conn.execute(count).scalar() or 0)
        return found, max(total - len(found), 0)

    def bounded_list(self, status: str | None = None, sweep_id: str | None = None) -> BoundedList:
        """Every PENDING and RUNNING run and the RECENT_ENDED_RUNS that ended last, newest
        first, and how many others match (SPEC section 7's `runsup list` without --all)."""
        ended = [s.value for s in FINAL_STATUSES]
        if status is not None:
            ended = [s for s in ended if s == status]
        with self.store._read() as conn:
            active: list[RunRecord] = []
            if status is None or status in _ACTIVE:
                wanted = list(_ACTIVE) if status is None else [status]
                active = [record_of(r) for r in conn.execute(_matching(wanted, sweep_id))]
            last: list[RunRecord] = []
            if ended:
                # `+status`: SQLite then walks ix_runs_completed_at from its end and stops after
                # RECENT_ENDED_RUNS rows; through the status index it would sort every final run.
                query = (
                    select(runs)
                    .where(literal_column("+runs.status").in_(ended))
                    .order_by(runs.c.completed_at.desc(), runs.c.created_at.desc())
                    .limit(RECENT_ENDED_RUNS)
                )
                if sweep_id is not None:
                    query = query.where(runs.c.sweep_id == sweep_id)
                last = [record_of(r) for r in conn.execute(query)]
            total = _count(conn, status, sweep_id)
        shown = active + last
        shown.sort(key=_newest_first_key, reverse=True)
        return BoundedList(shown, max(total - len(shown), 0))

    # -- writes (SPEC section 3) ---------------------------------------------------

    def submit(
        self,
        new_runs: Sequence[NewRun],
        *,
        after: Sequence[str] = (),
        after_any: Sequence[str] = (),
        sweep_id: str | None = None,
        not_before: datetime | None = None,
    ) -> list[RunRecord]:
        """Insert PENDING rows (and their run_dependencies) in ONE transaction, setting only the
        columns another program may set. A dependency on a run that does not exist is refused
        (ValidationError), nothing written."""
        for new in new_runs:
            if not new.template:
                raise ValidationError("a run needs a template name")
            check_config_json(new.config_json)
        deps = dependency_kinds(after, after_any)
        for _ in range(WRITE_ATTEMPTS):
            ids = [new_run_id() for _ in new_runs]
            rows = [
                {
                    "id": run_id,
                    "status": RunStatus.PENDING.value,
                    "config_json": new.config_json,
                    "template": new.template,
                    "created_at": utcnow(),
                    "name": new.name,
                    "priority": new.priority,
                    "not_before": not_before,
                    "sweep_id": sweep_id,
                }
                for run_id, new in zip(ids, new_runs, strict=True)
            ]

            def work(conn: Connection, rows: list[dict[str, Any]] = rows) -> None:
                check_dependencies_exist(conn, deps)
                conn.execute(insert(runs), rows)
                if deps:
                    conn.execute(
                        insert(run_dependencies),
                        [
                            {"run_id": row["id"], "depends_on": dep, "kind": kind}
                            for row in rows
                            for dep, kind in deps.items()
                        ],
                    )

            try:
                self.store._write(work)
            except IntegrityError:
                continue  # an id collision: 48 random bits make this all but impossible
            return self.get_many(ids)
        raise ValidationError("could not find a free run id")

    def request_cancel(self, run_id: str) -> tuple[RunRecord, bool]:
        """Set cancel_requested_at on a PENDING or RUNNING run; (the run, whether this asked)."""
        return self.store.request_cancel(run_id)


def _matching(statuses: list[str], sweep_id: str | None) -> Any:
    query = select(runs).where(runs.c.status.in_(statuses))
    if sweep_id is not None:
        query = query.where(runs.c.sweep_id == sweep_id)
    return query.order_by(runs.c.created_at.desc(), runs.c.id)


def _count(conn: Connection, status: str | None, sweep_id: str | None) -> int:
    query = select(func.count()).select_from(runs)
    if status is not None:
        query = query.where(runs.c.status == status)
    if sweep_id is not None:
        query = query.where(runs.c.sweep_id == sweep_id)
    return int(conn.execute(query).scalar() or 0)


def _newest_first_key(record: RunRecord) -> tuple[str, str]:
    created = record.created_at.isoformat() if record.created_at is not None else ""
    return created, record.id
