"""The store: intent-named operations on runs; every status change is one compare-and-set."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

import supervisor.db.queue_sql as queue_sql
import supervisor.db.run_reads as run_reads
from supervisor.db import lookup
from supervisor.db.changeprobe import ChangeProbe
from supervisor.db.changes import (
    RecordedProcess,
    RowChange,
    claim_released_change,
    claim_runs,
    final_change,
    insert_runs,
    running_change,
    timed_out_change,
    write_batch,
    write_change,
    write_progress,
)
from supervisor.db.engine import BUSY_TIMEOUT_MS, READ_OPTION, checkpoint, make_engine
from supervisor.db.faults import CommitFaults
from supervisor.db.migrate import ensure_schema
from supervisor.db.queue_sql import check_dependencies_exist, dependency_kinds
from supervisor.db.records import (
    Claim,
    Dependency,
    NewRun,
    Pause,
    ProgressUpdate,
    RunEvent,
    RunRecord,
    check_config_json,
    new_run_id,
    utcnow,
)
from supervisor.db.schema import runs
from supervisor.db.stats import RunStats, read_run_stats
from supervisor.errors import DatabaseBusy, DatabaseError, NotFoundError, ValidationError
from supervisor.states import RunStatus, sources_of

# A write that still finds the database locked after busy_timeout is tried again this often.
WRITE_ATTEMPTS = 3
WRITE_RETRY_DELAY_SECONDS = 0.5

T = TypeVar("T")


class Store:
    """Intent-named operations on the runs database; the only user of SQLAlchemy sessions."""

    def __init__(
        self,
        engine: Engine,
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        write_attempts: int = WRITE_ATTEMPTS,
    ) -> None:
        self.engine = engine
        self.busy_timeout_ms = busy_timeout_ms
        self.write_attempts = write_attempts
        # Commits of this store that change more than the progress cache; see ChangeProbe.
        self.status_writes = 0
        self._faults = CommitFaults()  # fault-injection tests only (faults.py)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        upgrade: bool = True,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        write_attempts: int = WRITE_ATTEMPTS,
    ) -> Store:
        """Open (and create or upgrade, unless told not to) the database at `url`.

        A caller that must not wait (the daemon's loop) passes a short `busy_timeout_ms` and
        one write attempt: a write that finds the database locked then raises DatabaseBusy
        soon, and the caller tries again later instead of blocking.
        """
        engine = make_engine(url, busy_timeout_ms=busy_timeout_ms)
        try:
            if upgrade:
                ensure_schema(engine)
            else:
                engine.connect().close()
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise DatabaseError(f"cannot open database {url}: {exc.orig}") from None
        return cls(engine, busy_timeout_ms=busy_timeout_ms, write_attempts=write_attempts)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # -- transactions -------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_OPTION: True})
            with conn.begin():
                yield conn

    def _reading(self, query: Callable[[Connection], T]) -> T:
        """A function of a connection, run in one read transaction."""
        with self._read() as conn:
            return query(conn)

    def _write(self, work: Callable[[Connection], T], *, progress_only: bool = False) -> T:
        """Run `work` in one write transaction; retry if another process held the lock too long.

        `progress_only`: the transaction touches nothing but the progress cache, so it does not
        count in `status_writes` (it gives a ChangeProbe nothing to look at).
        """
        if not progress_only:
            self.status_writes += 1
        for attempt in range(1, self.write_attempts + 1):
            try:
                with self.engine.begin() as conn:
                    result = work(conn)
                    self._faults.before_commit()  # inert unless a test armed it
                    return result
            except OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if attempt == self.write_attempts:
                    raise DatabaseBusy(f"the database stayed locked: {exc.orig}") from None
                time.sleep(WRITE_RETRY_DELAY_SECONDS * attempt)
        raise AssertionError("unreachable")

    def _update_one(self, run_id: str, conditions: list[Any], **values: Any) -> bool:
        """One conditional UPDATE of a run (a compare-and-set); True if it changed the row."""

        def work(conn: Connection) -> int:
            statement = update(runs).where(runs.c.id == run_id, *conditions).values(**values)
            return int(conn.execute(statement).rowcount)

        return self._write(work) == 1

    # -- for every program --------------------------------------------------

    def submit(
        self,
        template: str,
        config_json: str,
        name: str | None = None,
        *,
        priority: int | None = None,
        after: Sequence[str] = (),
        after_any: Sequence[str] = (),
    ) -> RunRecord:
        """Insert a PENDING run (with its dependencies); config_json must hold a JSON object."""
        new = NewRun(template, config_json, name, priority)
        return self.submit_many([new], after=after, after_any=after_any)[0]

    def submit_many(
        self,
        new_runs: Sequence[NewRun],
        *,
        after: Sequence[str] = (),
        after_any: Sequence[str] = (),
        sweep_id: str | None = None,
    ) -> list[RunRecord]:
        """Insert PENDING runs, all sharing the same dependencies, in ONE transaction.

        A dependency on a run that does not exist is refused (ValidationError), nothing written.
        """
        for new in new_runs:
            if not new.template:
                raise ValidationError("a run needs a template name")
            check_config_json(new.config_json)
        deps = dependency_kinds(after, after_any)
        for _ in range(WRITE_ATTEMPTS):
            ids = [new_run_id() for _ in new_runs]
            now = utcnow()

            def work(conn: Connection, ids: list[str] = ids, now: datetime = now) -> None:
                check_dependencies_exist(conn, deps)
                insert_runs(conn, ids, new_runs, deps, now=now, sweep_id=sweep_id)

            try:
                self._write(work)
            except IntegrityError:
                continue  # an id collision: 48 random bits make this all but impossible
            by_id = {r.id: r for r in self.get_many(ids)}
            return [by_id[i] for i in ids]
        raise ValidationError("could not find a free run id")

    def find(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        return self._reading(lambda conn: run_reads.find_run(conn, run_id))

    def get(self, run_id: str) -> RunRecord:
        """The run with this id; NotFoundError if there is none."""
        record = self.find(run_id)
        if record is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return record

    def resolve_id(self, typed: str, *, sweep: bool = False) -> str:
        """The run (or sweep) id that `typed` is or uniquely starts (supervisor.db.lookup)."""
        with self._read() as conn:
            return lookup.resolve(conn, typed, sweep=sweep)

    def list_runs(
        self, status: str | None = None, limit: int | None = None, sweep_id: str | None = None
    ) -> list[RunRecord]:
        """Runs, newest first, optionally of one status and of one sweep."""
        return self._reading(lambda conn: run_reads.list_runs(conn, status, limit, sweep_id))

    def get_many(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """The runs with these ids (missing ones are left out)."""
        ids = list(run_ids)
        return self._reading(lambda conn: run_reads.get_many(conn, ids)) if ids else []

    def events(self, run_id: str) -> list[RunEvent]:
        """A run's status history, oldest first."""
        return self._reading(lambda conn: run_reads.events(conn, run_id))

    def count_status(self, status: RunStatus) -> int:
        """How many runs have this status."""
        return self._reading(lambda conn: run_reads.count_status(conn, status))

    def counts(self) -> dict[str, int]:
        """How many runs there are of each status."""
        return self._reading(run_reads.counts)

    def run_stats(self, templates: Iterable[str], other: str, now: datetime) -> RunStats:
        """The metrics' figures (supervisor.db.stats), read in one short read transaction."""
        return self._reading(lambda conn: read_run_stats(conn, templates, other, now))

    def request_cancel(self, run_id: str) -> tuple[RunRecord, bool]:
        """Ask for a cancel; returns the run and whether this call made the request."""

        changed = self._update_one(
            run_id,
            [
                runs.c.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
                runs.c.cancel_requested_at.is_(None),
            ],
            cancel_requested_at=utcnow(),
        )
        return self.get(run_id), changed

    # -- for the daemon -----------------------------------------------------

    def active_runs(self) -> list[RunRecord]:
        """Runs the daemon is responsible for: RUNNING, or PENDING and claimed for launch."""
        return self._reading(run_reads.active_runs)

    def foreign_running(self) -> list[RunRecord]:
        """RUNNING rows the daemon did not start (see run_reads.foreign_running)."""
        return self._reading(run_reads.foreign_running)

    def overturned_runs(self, boot_id: str) -> list[RunRecord]:
        """Runs started in this boot whose final status another program wrote (see
        run_reads.overturned_runs): their true outcome is still to come."""
        return self._reading(lambda conn: run_reads.overturned_runs(conn, boot_id))

    def cancel_requests(self) -> list[RunRecord]:
        """PENDING or RUNNING runs somebody asked to cancel."""
        return self._reading(run_reads.cancel_requests)

    def claim_launch(self, run_id: str) -> bool:
        """Claim a PENDING run for launch (compare-and-set); False if it was not free."""
        return self.claim_many([run_id]) == [run_id]

    def release_claim(self, run_id: str) -> bool:
        """Undo a launch claim on a run that is provably not started, so it is launched again."""
        return self.commit_batch([claim_released_change(run_id)])[0]

    def transition(
        self,
        run_id: str,
        to: RunStatus,
        *,
        reason: str | None,
        values: Mapping[str, Any] | None = None,
        expect: Iterable[RunStatus] | None = None,
    ) -> bool:
        """Move a run to `to` if its status allows (one compare-and-set UPDATE) and log the event.

        Returns False, changing nothing, when the run is not in a status that may move to `to`.
        """
        sources = sources_of(to)
        if expect is not None:
            sources = sources & frozenset(expect)
        change = RowChange(run_id, sources, dict(values or {}), to=to, reason=reason)
        return self._write(lambda conn: write_change(conn, change))

    def commit_batch(
        self, changes: Sequence[RowChange], progress: Sequence[ProgressUpdate] = ()
    ) -> list[bool]:
        """Apply many compare-and-set changes and progress updates in ONE transaction.

        Returns, for each change, whether it applied. All or nothing: if the database stays
        locked, DatabaseBusy is raised and nothing is written.
        """
        if not changes and not progress:
            return []

        return self._write(
            lambda conn: write_batch(conn, changes, progress), progress_only=not changes
        )

    def claim_many(self, claims: Sequence[str | Claim]) -> list[str]:
        """Claim these PENDING runs for launch in one transaction, writing what each holds;
        returns the ids claimed (a run cancelled or taken meanwhile is left out)."""
        if not claims:
            return []
        now = utcnow()
        full = [c if isinstance(c, Claim) else Claim(c) for c in claims]

        return self._write(lambda conn: claim_runs(conn, full, now))

    def mark_running(
        self, run_id: str, process: RecordedProcess, *, run_dir: str, reason: str = "launched"
    ) -> bool:
        """PENDING -> RUNNING, in the same commit as the live pid and pgid (see running_change)."""
        change = running_change(run_id, process, run_dir=run_dir, reason=reason)
        return self.commit_batch([change])[0]

    def finish(
        self,
        run_id: str,
        to: RunStatus,
        *,
        reason: str,
        exit_code: int | None = None,
        exit_signal: int | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Move a run to a final status with its exit status and reason."""
        change = final_change(
            run_id,
            to,
            reason=reason,
            exit_code=exit_code,
            exit_signal=exit_signal,
            error_message=error_message,
        )
        return self.commit_batch([change])[0]

    def mark_timed_out(self, run_id: str) -> bool:
        """Remember that the daemon is stopping this run for its timeout (survives a restart)."""
        return self.commit_batch([timed_out_change(run_id)])[0]

    def record_progress(self, updates: Sequence[ProgressUpdate]) -> int:
        """Write the latest progress of many runs in one transaction; returns rows changed."""
        if not updates:
            return 0
        return self._write(lambda conn: write_progress(conn, updates), progress_only=True)

    def checkpoint(self) -> bool:
        """Fold the -wal file back into the database and truncate it; False if not done now
        (never waits: see engine.checkpoint)."""
        return checkpoint(self.engine, self.busy_timeout_ms)

    # -- the queue (SPEC section 11): its SQL is in queue_sql ------------------

    def pending_runs(
        self,
        limit: int,
        *,
        now: datetime | None = None,
        skip_templates: Iterable[str] = (),
        room: Mapping[str, int] | None = None,
    ) -> list[RunRecord]:
        """Up to `limit` unclaimed PENDING runs that may start now, in queue order (see
        queue_sql.pending_runs)."""
        when = now or utcnow()
        return self._reading(
            lambda conn: queue_sql.pending_runs(
                conn, limit, now=when, skip_templates=skip_templates, room=room
            )
        )

    def running_templates(self) -> dict[str, str]:
        """Run id -> template of every RUNNING run (for max_concurrent)."""
        return self._reading(queue_sql.running_templates)

    def doomed_dependents(self) -> list[Dependency]:
        """Dependencies of unclaimed PENDING runs that can never be met."""
        return self._reading(queue_sql.doomed_dependents)

    def pending_dependency_edges(self) -> list[tuple[str, str]]:
        """(run, depends_on) where both are PENDING: where a dependency cycle can hide."""
        return self._reading(queue_sql.pending_dependency_edges)

    def dependency_marker(self) -> int:
        """The highest rowid of run_dependencies: grows when another program adds some."""
        return self._reading(queue_sql.dependency_marker)

    def have_dependents(self, run_ids: Sequence[str]) -> bool:
        """True if any run depends on one of these."""
        if not run_ids:
            return False
        return self._reading(lambda conn: queue_sql.have_dependents(conn, run_ids))

    def dependencies_of(self, run_id: str) -> list[Dependency]:
        """What a run waits for, with each dependency's status now."""
        return self._reading(lambda conn: queue_sql.dependencies_of(conn, run_id))

    def set_priority(self, run_id: str, priority: int) -> RunRecord:
        """Set a PENDING run's priority; ValidationError for a run that is not PENDING."""
        changed = self._update_one(
            run_id, [runs.c.status == RunStatus.PENDING.value], priority=priority
        )
        record = self.get(run_id)
        if not changed:
            raise ValidationError(
                f"run {run_id} is {record.status}: only a PENDING run's priority can change"
            )
        return record

    def pauses(self) -> list[Pause]:
        """Every queue_pauses row, `*` first."""
        return self._reading(queue_sql.pauses)

    def pause(self, scope: str, reason: str | None = None) -> bool:
        """Stop starting runs of `scope` (`*` or a template); False if it was paused already."""
        return self._write(lambda conn: queue_sql.add_pause(conn, scope, reason, utcnow()))

    def resume(self, scope: str) -> bool:
        """Start runs of `scope` again; False if it was not paused."""
        return self._write(lambda conn: queue_sql.remove_pause(conn, scope))

    def final_events_since(self, after_id: int) -> tuple[list[str], int]:
        """Runs that reached a final status in run_events rows after `after_id`; the new cursor."""
        return self._reading(lambda conn: queue_sql.final_events_since(conn, after_id))

    def queue_marker(self) -> tuple[int, int]:
        """Changes whenever a run may have become startable (see queue_sql.queue_marker)."""
        return self._reading(queue_sql.queue_marker)

    def last_event_id(self) -> int:
        """The newest run_events id (0 when there is none)."""
        return self._reading(run_reads.last_event_id)

    def next_not_before(self, now: datetime) -> datetime | None:
        """The earliest not_before still to come of an unclaimed PENDING run, if any."""
        return self._reading(lambda conn: queue_sql.next_not_before(conn, now))

    def unhooked_runs(self, templates: Iterable[str] | None, since: datetime) -> list[RunRecord]:
        """Final runs whose on_finish hook has not run, ended after `since`, of these templates
        (None: any)."""
        return self._reading(lambda conn: queue_sql.unhooked_runs(conn, templates, since))

    def change_probe(self) -> ChangeProbe:
        """A probe that tells cheaply whether runs changed other than by our progress writes."""
        return ChangeProbe(self)


def _is_busy(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message
