"""The store: intent-named operations on runs; every status change is one compare-and-set."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar, get_type_hints

from sqlalchemy import Engine, Row, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from supervisor.db.engine import BUSY_TIMEOUT_MS, READ_OPTION, make_engine
from supervisor.db.migrate import ensure_schema
from supervisor.db.schema import run_events, runs
from supervisor.errors import DatabaseBusy, DatabaseError, NotFoundError, ValidationError
from supervisor.states import FINAL_STATUSES, RunStatus, sources_of

RUN_ID_BYTES = 6  # 12 lowercase hex characters (SPEC section 3)
# A write that still finds the database locked after busy_timeout is tried again this often.
WRITE_ATTEMPTS = 3
WRITE_RETRY_DELAY_SECONDS = 0.5

T = TypeVar("T")


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def new_run_id() -> str:
    """A fresh run id: 12 lowercase hex characters."""
    return secrets.token_hex(RUN_ID_BYTES)


def is_valid_run_id(value: object) -> bool:
    """True for 12 lowercase hex characters, the only ids the daemon acts on."""
    return (
        isinstance(value, str)
        and len(value) == 2 * RUN_ID_BYTES
        and all(c in "0123456789abcdef" for c in value)
    )


@dataclass(frozen=True)
class RunRecord:
    """One row of `runs`, as plain values (never an ORM object)."""

    id: str
    name: str | None
    status: str
    config_json: str
    template: str
    pid: int | None
    pgid: int | None
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    current_erlang: float | None
    total_erlangs: int | None
    current_iteration: int | None
    total_iterations: int | None
    exit_code: int | None
    exit_signal: int | None
    cancel_requested_at: datetime | None
    progress_updated_at: datetime | None
    run_dir: str | None
    priority: int | None
    not_before: datetime | None
    attempt: int | None
    sweep_id: str | None
    executor: str | None
    external_id: str | None
    host: str | None
    cpus: int | None
    gpu_ids: str | None
    memory_max_bytes: int | None
    peak_memory_bytes: int | None
    launch_claimed_at: datetime | None
    boot_id: str | None
    pid_start_ticks: int | None
    keeper_pid: int | None
    keeper_start_ticks: int | None
    timed_out_at: datetime | None
    erlang_index: int | None
    progress_offset: int | None
    progress_bad_lines: int | None
    hook_done_at: datetime | None
    output_offset: int | None

    @property
    def is_final(self) -> bool:
        """True once the run has reached COMPLETED, FAILED or CANCELLED."""
        return self.status in FINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; timestamps as ISO-8601 UTC."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True)
class RunEvent:
    """One row of `run_events`: a status change and why."""

    id: int
    run_id: str
    at: datetime | None
    from_status: str | None
    to_status: str
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "at": self.at.isoformat() if self.at else None}


@dataclass(frozen=True)
class ProgressUpdate:
    """The latest progress of one run, to be written in a batch."""

    run_id: str
    current_erlang: float | None
    total_erlangs: int | None
    current_iteration: int | None
    total_iterations: int | None
    erlang_index: int | None
    offset: int
    bad_lines: int
    output_offset: int | None = None


@dataclass(frozen=True)
class Claim:
    """A PENDING run taken for launch, with where it goes and what it holds (SPEC 9, 10)."""

    run_id: str
    executor: str | None = None
    cpus: int | None = None
    gpu_ids: str | None = None  # comma-separated, as in CUDA_VISIBLE_DEVICES
    memory_max_bytes: int | None = None

    def values(self) -> dict[str, Any]:
        """The columns the claim writes besides launch_claimed_at."""
        out: dict[str, Any] = {}
        if self.executor is not None:
            out["executor"] = self.executor
        if self.cpus is not None:
            out["cpus"] = self.cpus
        out["gpu_ids"] = self.gpu_ids
        out["memory_max_bytes"] = self.memory_max_bytes
        return out


@dataclass(frozen=True)
class RowChange:
    """One compare-and-set write of a run's row, to commit alone or in a batch.

    Applies only while the row's status is one of `expect`; with `to`, it moves the status and
    appends the `run_events` row (at the change's own time, not the commit's).
    """

    run_id: str
    expect: frozenset[RunStatus]
    values: Mapping[str, Any]
    to: RunStatus | None = None
    reason: str | None = None
    at: datetime = field(default_factory=lambda: utcnow())


def running_change(
    run_id: str,
    *,
    pid: int,
    pgid: int,
    run_dir: str,
    boot_id: str,
    pid_start_ticks: int,
    keeper_pid: int,
    keeper_start_ticks: int,
    reason: str = "launched",
    host: str | None = None,
    external_id: str | None = None,
) -> RowChange:
    """PENDING -> RUNNING with the process identity a restarted daemon will need (and, for a
    cluster job, the node it runs on and its id)."""
    now = utcnow()
    values: dict[str, Any] = {
        "pid": pid,
        "pgid": pgid,
        "run_dir": run_dir,
        "boot_id": boot_id,
        "pid_start_ticks": pid_start_ticks,
        "keeper_pid": keeper_pid,
        "keeper_start_ticks": keeper_start_ticks,
        "started_at": now,
    }
    if host is not None:
        values["host"] = host
    if external_id is not None:
        values["external_id"] = external_id
    return RowChange(run_id, frozenset({RunStatus.PENDING}), values, RunStatus.RUNNING, reason, now)


def final_change(
    run_id: str,
    to: RunStatus,
    *,
    reason: str,
    exit_code: int | None = None,
    exit_signal: int | None = None,
    error_message: str | None = None,
    expect: Iterable[RunStatus] | None = None,
    peak_memory_bytes: int | None = None,
) -> RowChange:
    """A move to a final status with how the run ended."""
    now = utcnow()
    sources = sources_of(to) if expect is None else sources_of(to) & frozenset(expect)
    values: dict[str, Any] = {
        "exit_code": exit_code,
        "exit_signal": exit_signal,
        "error_message": error_message,
        "completed_at": now,
    }
    if peak_memory_bytes is not None:
        values["peak_memory_bytes"] = peak_memory_bytes
    return RowChange(run_id, sources, values, to, reason, now)


def corrected_final_change(
    run_id: str,
    was: RunStatus,
    to: RunStatus,
    *,
    reason: str,
    exit_code: int | None = None,
    exit_signal: int | None = None,
    error_message: str | None = None,
) -> RowChange:
    """Over a final status another program wrote while the run still lived: the true one
    (SPEC section 3), with a run_events row that says so."""
    now = utcnow()
    values = {
        "exit_code": exit_code,
        "exit_signal": exit_signal,
        "error_message": error_message,
        "completed_at": now,
    }
    why = f"{reason} (corrected: another program had written {was.value})"
    return RowChange(run_id, frozenset({was}), values, to, why, now)


def kept_foreign_final_change(run_id: str, status: RunStatus, why: str) -> RowChange:
    """An event that records, once, that the status another program wrote is kept."""
    return RowChange(run_id, frozenset({status}), {}, status, why)


def foreign_identity_change(run_id: str, *, pid_start_ticks: int, boot_id: str) -> RowChange:
    """Remember which process stands for a run another program started (pid reuse)."""
    values = {"pid_start_ticks": pid_start_ticks, "boot_id": boot_id}
    return RowChange(run_id, frozenset({RunStatus.RUNNING}), values)


def standin_change(
    run_id: str,
    *,
    pid: int,
    pgid: int,
    pid_start_ticks: int,
    boot_id: str,
    keeper_pid: int,
    keeper_start_ticks: int,
) -> RowChange:
    """A RUNNING cluster run's stand-in made again (the daemon's machine rebooted): the row
    names the new local group, so `killpg(pgid, 0)` keeps telling the truth (SPEC 9)."""
    values = {
        "pid": pid,
        "pgid": pgid,
        "pid_start_ticks": pid_start_ticks,
        "boot_id": boot_id,
        "keeper_pid": keeper_pid,
        "keeper_start_ticks": keeper_start_ticks,
    }
    return RowChange(run_id, frozenset({RunStatus.RUNNING}), values)


def external_id_change(run_id: str, external_id: str) -> RowChange:
    """A claimed run's cluster job id, recorded before anything relies on it (SPEC 9)."""
    return RowChange(run_id, frozenset({RunStatus.PENDING}), {"external_id": external_id})


def timed_out_change(run_id: str) -> RowChange:
    """Remember that the daemon is stopping this run for its timeout (survives a restart)."""
    return RowChange(run_id, frozenset({RunStatus.RUNNING}), {"timed_out_at": utcnow()})


def claim_released_change(run_id: str) -> RowChange:
    """Undo a launch claim on a run that is provably not started, so it is launched again."""
    return RowChange(run_id, frozenset({RunStatus.PENDING}), {"launch_claimed_at": None})


def _apply(conn: Connection, change: RowChange) -> bool:
    """Apply one RowChange inside the caller's transaction; True if the row matched."""
    if not change.expect:
        return False
    allowed = sorted(s.value for s in change.expect)
    values = dict(change.values)
    before = None
    if change.to is not None:
        values["status"] = change.to.value
        # Under BEGIN IMMEDIATE nobody else writes between this read and the update.
        before = conn.execute(select(runs.c.status).where(runs.c.id == change.run_id)).scalar()
    result = conn.execute(
        update(runs).where(runs.c.id == change.run_id, runs.c.status.in_(allowed)).values(values)
    )
    if result.rowcount != 1:
        return False
    if change.to is not None:
        conn.execute(
            insert(run_events).values(
                run_id=change.run_id,
                at=change.at,
                from_status=before,
                to_status=change.to.value,
                reason=change.reason,
            )
        )
    return True


def _write_progress(conn: Connection, updates: Sequence[ProgressUpdate]) -> int:
    """UPDATE the progress cache of RUNNING rows; returns rows changed."""
    at = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    # One prepared statement for the whole batch (executemany), with positional parameters
    # straight to the driver where it takes them (SQLite): a 200-run batch then costs
    # 0.8 ms of CPU instead of 2.2 ms through text() and named parameters (bench/ load).
    args = [
        (
            u.current_erlang,
            u.total_erlangs,
            u.current_iteration,
            u.total_iterations,
            u.erlang_index,
            u.offset,
            u.bad_lines,
            u.output_offset,
            at,
            u.run_id,
        )
        for u in updates
    ]
    if conn.dialect.paramstyle == "qmark":
        return int(conn.exec_driver_sql(_PROGRESS_QMARK_SQL, args).rowcount)
    rows = [dict(zip(_PROGRESS_KEYS, a, strict=True)) for a in args]
    return int(conn.execute(text(_PROGRESS_NAMED_SQL), rows).rowcount)


def _as_int(value: object) -> int | None:
    # Other programs write rows too, and SQLite stores what it is given.
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _as_str(value: object) -> str | None:
    return None if value is None else str(value)


def _as_text(value: object) -> str:
    # The NOT NULL text columns; a foreign NULL still reads as a string.
    return "" if value is None else str(value)


def _as_datetime(value: object) -> datetime | None:
    # UTCDateTime already parsed it (leniently); anything else is not a timestamp.
    return value if isinstance(value, datetime) else None


# How each declared field type is read from a row: keyed by the real types, not their spelling.
_CONVERTERS: dict[object, Callable[[object], Any]] = {
    int | None: _as_int,
    float | None: _as_float,
    str | None: _as_str,
    str: _as_text,
    datetime | None: _as_datetime,
}


def field_converters(cls: type[Any]) -> dict[str, Callable[[object], Any]]:
    """One row-value converter per field of dataclass `cls`; TypeError for a type without one."""
    hints = get_type_hints(cls)
    out: dict[str, Callable[[object], Any]] = {}
    for f in fields(cls):
        converter = _CONVERTERS.get(hints[f.name])
        if converter is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no row converter for {hints[f.name]}")
        out[f.name] = converter
    return out


# Chosen once, at import: a RunRecord field of an unsupported type fails here, not on a read.
_RECORD_CONVERTERS = field_converters(RunRecord)


def _record(row: Row[Any]) -> RunRecord:
    m = row._mapping
    return RunRecord(**{name: read(m[name]) for name, read in _RECORD_CONVERTERS.items()})


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
                    return work(conn)
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

    def submit(self, template: str, config_json: str, name: str | None = None) -> RunRecord:
        """Insert a PENDING run; config_json must hold a JSON object."""
        if not template:
            raise ValidationError("a run needs a template name")
        check_config_json(config_json)
        for _ in range(WRITE_ATTEMPTS):
            run_id = new_run_id()
            now = utcnow()

            def work(conn: Connection, run_id: str = run_id, now: datetime = now) -> None:
                conn.execute(
                    insert(runs).values(
                        id=run_id,
                        name=name,
                        status=RunStatus.PENDING.value,
                        config_json=config_json,
                        template=template,
                        created_at=now,
                    )
                )
                conn.execute(
                    insert(run_events).values(
                        run_id=run_id,
                        at=now,
                        from_status=None,
                        to_status=RunStatus.PENDING.value,
                        reason="submitted",
                    )
                )

            try:
                self._write(work)
            except IntegrityError:
                continue  # an id collision: 48 random bits make this all but impossible
            return self.get(run_id)
        raise ValidationError("could not find a free run id")

    def find(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        with self._read() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        return None if row is None else _record(row)

    def get(self, run_id: str) -> RunRecord:
        """The run with this id; NotFoundError if there is none."""
        record = self.find(run_id)
        if record is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return record

    def list_runs(self, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally of one status."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id)
        if status is not None:
            query = query.where(runs.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def get_many(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """The runs with these ids (missing ones are left out)."""
        ids = list(run_ids)
        if not ids:
            return []
        with self._read() as conn:
            return [_record(r) for r in conn.execute(select(runs).where(runs.c.id.in_(ids)))]

    def events(self, run_id: str) -> list[RunEvent]:
        """A run's status history, oldest first."""
        query = select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id)
        with self._read() as conn:
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

    def counts(self) -> dict[str, int]:
        """How many runs there are of each status."""
        query = select(runs.c.status, func.count()).group_by(runs.c.status)
        with self._read() as conn:
            return {str(status): int(n) for status, n in conn.execute(query)}

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

    def pending_runs(self, limit: int) -> list[RunRecord]:
        """Unclaimed PENDING runs, oldest first."""
        query = (
            select(runs)
            .where(runs.c.status == RunStatus.PENDING.value, runs.c.launch_claimed_at.is_(None))
            .order_by(runs.c.created_at, runs.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def active_runs(self) -> list[RunRecord]:
        """Runs the daemon is responsible for: RUNNING, or PENDING and claimed for launch."""
        query = select(runs).where(
            (runs.c.status == RunStatus.RUNNING.value)
            | ((runs.c.status == RunStatus.PENDING.value) & runs.c.launch_claimed_at.is_not(None))
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def foreign_running(self) -> list[RunRecord]:
        """RUNNING rows the daemon did not start: another program wrote their pid and pgid
        (the daemon's own RUNNING rows always carry their keeper's pid)."""
        query = select(runs).where(
            runs.c.status == RunStatus.RUNNING.value, runs.c.keeper_pid.is_(None)
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def overturned_runs(self, boot_id: str) -> list[RunRecord]:
        """Runs the daemon started in this boot whose final status another program wrote: the
        row is final, but its last run_events row (every status change of ours has one) is not
        that status. Their processes may still live; their true outcome is still to come."""
        last = (
            select(run_events.c.to_status)
            .where(run_events.c.run_id == runs.c.id)
            .order_by(run_events.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(runs).where(
            runs.c.status.in_([s.value for s in FINAL_STATUSES]),
            runs.c.keeper_pid.is_not(None),
            runs.c.keeper_pid != 0,
            runs.c.boot_id == boot_id,
            func.coalesce(last, "") != runs.c.status,
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def cancel_requests(self) -> list[RunRecord]:
        """PENDING or RUNNING runs somebody asked to cancel."""
        query = select(runs).where(
            runs.c.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
            runs.c.cancel_requested_at.is_not(None),
        )
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def claim_launch(self, run_id: str) -> bool:
        """Claim a PENDING run for launch (compare-and-set); False if it was not free."""
        return self._update_one(
            run_id,
            [
                runs.c.status == RunStatus.PENDING.value,
                runs.c.launch_claimed_at.is_(None),
                runs.c.cancel_requested_at.is_(None),
            ],
            launch_claimed_at=utcnow(),
        )

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
        return self._write(lambda conn: _apply(conn, change))

    def commit_batch(
        self, changes: Sequence[RowChange], progress: Sequence[ProgressUpdate] = ()
    ) -> list[bool]:
        """Apply many compare-and-set changes and progress updates in ONE transaction.

        Returns, for each change, whether it applied. All or nothing: if the database stays
        locked, DatabaseBusy is raised and nothing is written.
        """
        if not changes and not progress:
            return []

        # Starts before progress before ends: progress lands only on RUNNING rows, so a run
        # started, moved on and ended within one batch keeps its last progress.
        finals = [i for i, c in enumerate(changes) if c.to is not None and c.to.is_final]
        final_set = set(finals)
        order = [i for i in range(len(changes)) if i not in final_set]

        def work(conn: Connection) -> list[bool]:
            results = [False] * len(changes)
            for i in order:
                results[i] = _apply(conn, changes[i])
            if progress:
                _write_progress(conn, progress)
            for i in finals:
                results[i] = _apply(conn, changes[i])
            return results

        return self._write(work, progress_only=not changes)

    def claim_many(self, claims: Sequence[str | Claim]) -> list[str]:
        """Claim these PENDING runs for launch in one transaction, writing what each holds;
        returns the ids claimed (a run cancelled or taken meanwhile is left out)."""
        if not claims:
            return []
        now = utcnow()
        full = [c if isinstance(c, Claim) else Claim(c) for c in claims]

        def work(conn: Connection) -> list[str]:
            won = []
            for claim in full:
                statement = (
                    update(runs)
                    .where(
                        runs.c.id == claim.run_id,
                        runs.c.status == RunStatus.PENDING.value,
                        runs.c.launch_claimed_at.is_(None),
                        runs.c.cancel_requested_at.is_(None),
                    )
                    .values(launch_claimed_at=now, **claim.values())
                )
                if conn.execute(statement).rowcount == 1:
                    won.append(claim.run_id)
            return won

        return self._write(work)

    def mark_running(self, run_id: str, **process: Any) -> bool:
        """PENDING -> RUNNING, in the same commit as the live pid and pgid (see running_change)."""
        return self.commit_batch([running_change(run_id, **process)])[0]

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
        return self._write(lambda conn: _write_progress(conn, updates), progress_only=True)

    def checkpoint(self) -> bool:
        """Fold the -wal file back into the database and truncate it; False if not done now.

        Never waits: TRUNCATE calls the busy handler until every reader has left its old
        snapshot, which with busy_timeout would stall the caller up to BUSY_TIMEOUT_MS per try
        while some program keeps a read transaction open. So this call runs with no busy
        timeout and reports "not now" instead; the caller tries again later.
        """
        if self.engine.dialect.name != "sqlite":
            return True
        # Outside any transaction: a checkpoint cannot run inside one.
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute("PRAGMA busy_timeout=0")
            try:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                row = cursor.fetchone()
            finally:
                cursor.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        finally:
            conn.close()
        return row is not None and int(row[0]) == 0

    def change_probe(self) -> ChangeProbe:
        """A probe that tells cheaply whether runs changed other than by our progress writes."""
        return ChangeProbe(self)


class ChangeProbe:
    """Tells whether another program committed, or this store changed more than progress.

    Reads PRAGMA data_version, which moves on every commit made by *another* connection, on
    the store's own pooled connection (the loop uses one at a time, so the pool holds one):
    then the store's own commits do not show there, and `Store.status_writes` counts those
    that matter (status changes, claims), leaving out the progress cache. So the daemon's
    progress batches no longer look like news from other programs: at 10,000 progress lines a
    second they had caused about 20 extra database passes a second (bench/ load scenario).
    A value read on another connection than last time counts as a change (never a miss).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sqlite = store.engine.dialect.name == "sqlite"
        self._key = f"runsup_data_version_{id(self)}"  # in the connection's own info dict
        self._last_writes: int | None = None

    def changed(self) -> bool:
        """True if something may have changed since the last call (always True off SQLite)."""
        if not self._sqlite:
            return True
        conn = self._store.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute("PRAGMA data_version")
                row = cursor.fetchone()
                version = int(row[0]) if row else 0
            finally:
                cursor.close()
            last = conn.info.get(self._key)
            conn.info[self._key] = version
        finally:
            conn.close()  # back to the pool
        writes = self._store.status_writes
        changed = version != last or writes != self._last_writes
        self._last_writes = writes
        return changed

    def close(self) -> None:
        """Nothing is held between calls (kept for callers that close their probe)."""


def check_config_json(config_json: str) -> dict[str, Any]:
    """Parse a run's config; ValidationError unless it is a JSON object."""
    try:
        value = json.loads(config_json)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"config is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationError("config is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ValidationError(f"config must be a JSON object, got {type(value).__name__}")
    return value


# record_progress's statement, with named parameters (any driver) and positional ones (SQLite).
_PROGRESS_KEYS = (
    "b_ce", "b_te", "b_ci", "b_ti", "b_ei", "b_off", "b_bad", "b_out", "b_at", "b_id"
)
_PROGRESS_NAMED_SQL = (
    "UPDATE runs SET current_erlang = :b_ce, total_erlangs = :b_te,"
    " current_iteration = :b_ci, total_iterations = :b_ti, erlang_index = :b_ei,"
    " progress_offset = :b_off, progress_bad_lines = :b_bad, output_offset = :b_out,"
    " progress_updated_at = :b_at"
    " WHERE id = :b_id AND status = 'RUNNING'"
)
_PROGRESS_QMARK_SQL = (
    "UPDATE runs SET current_erlang = ?, total_erlangs = ?,"
    " current_iteration = ?, total_iterations = ?, erlang_index = ?,"
    " progress_offset = ?, progress_bad_lines = ?, output_offset = ?,"
    " progress_updated_at = ?"
    " WHERE id = ? AND status = 'RUNNING'"
)


def _is_busy(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message
