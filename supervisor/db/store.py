"""The store: intent-named operations on runs; every status change is one compare-and-set."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, TypeVar, get_type_hints

from sqlalchemy import Engine, Row, and_, delete, func, insert, literal, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from supervisor.db import lookup
from supervisor.db.engine import BUSY_TIMEOUT_MS, READ_OPTION, make_engine
from supervisor.db.migrate import ensure_schema
from supervisor.db.schema import (
    CANCEL_INDEX_NAME,
    CANCEL_REQUESTED_SQL,
    QUEUE_ORDER,
    TIMESTAMP_FORMAT,
    parse_timestamp,
    queue_pauses,
    run_dependencies,
    run_events,
    runs,
)
from supervisor.db.stats import RunStats, read_run_stats
from supervisor.errors import DatabaseBusy, DatabaseError, NotFoundError, ValidationError
from supervisor.states import FINAL_STATUSES, RunStatus, sources_of

RUN_ID_BYTES = 6  # 12 lowercase hex characters (SPEC section 3)
# run_dependencies.kind (SPEC section 11); NULL, and any other value, reads as afterok.
AFTER_OK = "afterok"
AFTER_ANY = "afterany"
QUEUE_ALL = "*"  # the queue_pauses scope that holds every run
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
        return _json_ready(self)


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
        """A JSON-ready dict; timestamps as ISO-8601 UTC."""
        return _json_ready(self)


def _json_ready(record: Any) -> dict[str, Any]:
    """A record's fields as a dict for json.dumps: datetimes as ISO-8601 text."""
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in asdict(record).items()
    }


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


@dataclass(frozen=True)
class NewRun:
    """One run to submit (see Store.submit_many)."""

    template: str
    config_json: str
    name: str | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Pause:
    """One row of `queue_pauses`: scope `*` holds every run, a template name that template's."""

    scope: str
    paused_at: datetime | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; timestamps as ISO-8601 UTC."""
        return _json_ready(self)


@dataclass(frozen=True)
class Dependency:
    """One row of `run_dependencies`, with the status of the run depended on (None: no such run)."""

    run_id: str
    depends_on: str
    kind: str
    status: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


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
    change = final_change(
        run_id,
        to,
        reason=f"{reason} (corrected: another program had written {was.value})",
        exit_code=exit_code,
        exit_signal=exit_signal,
        error_message=error_message,
    )
    return replace(change, expect=frozenset({was}))


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


# What a run's next attempt must not inherit from its last one (SPEC section 11): process
# identity, exit fields, timestamps of the attempt, held resources and the progress cache.
_ATTEMPT_COLUMNS_CLEARED = (
    "pid",
    "pgid",
    "started_at",
    "completed_at",
    "exit_code",
    "exit_signal",
    "error_message",
    "launch_claimed_at",
    "boot_id",
    "pid_start_ticks",
    "keeper_pid",
    "keeper_start_ticks",
    "timed_out_at",
    "external_id",
    "host",
    "cpus",
    "gpu_ids",
    "memory_max_bytes",
    "peak_memory_bytes",
    "current_erlang",
    "total_erlangs",
    "current_iteration",
    "total_iterations",
    "erlang_index",
    "progress_updated_at",
)


def retry_change(run_id: str, *, attempt: int, not_before: datetime, reason: str) -> RowChange:
    """RUNNING -> PENDING as attempt `attempt`, not before `not_before`; the row forgets the last
    attempt's process and progress (the progress file is read from offset 0 again)."""
    values: dict[str, Any] = dict.fromkeys(_ATTEMPT_COLUMNS_CLEARED)
    values.update(attempt=attempt, not_before=not_before, progress_offset=0, progress_bad_lines=0)
    return RowChange(
        run_id, frozenset({RunStatus.RUNNING}), values, RunStatus.PENDING, reason, utcnow()
    )


def hook_done_change(run_id: str) -> RowChange:
    """Remember that a final run's on_finish hook has run (SPEC section 13)."""
    return RowChange(run_id, FINAL_STATUSES, {"hook_done_at": utcnow()})


def _dependency_kinds(after: Sequence[str], after_any: Sequence[str]) -> dict[str, str]:
    deps = dict.fromkeys(after, AFTER_OK)
    for dep in after_any:
        if deps.get(dep) == AFTER_OK:
            raise ValidationError(f"run {dep} is named by both --after and --after-any")
        deps[dep] = AFTER_ANY
    return deps


def _check_dependencies_exist(conn: Connection, deps: Mapping[str, str]) -> None:
    if not deps:
        return
    found = set(conn.execute(select(runs.c.id).where(runs.c.id.in_(list(deps)))).scalars())
    missing = sorted(set(deps) - found)
    if missing:
        raise ValidationError(f"no run with id {', '.join(missing)} to depend on")


def _apply(conn: Connection, change: RowChange) -> bool:
    """Apply one RowChange inside the caller's transaction; True if the row matched."""
    values = dict(change.values)
    if change.to is not None:
        values["status"] = change.to.value
    # One UPDATE per allowed source status, the likeliest first: the one that matches tells the
    # event's from_status without a SELECT (under BEGIN IMMEDIATE nobody writes in between).
    for source in sorted(change.expect, key=_likeliest_first):
        result = conn.execute(
            update(runs)
            .where(runs.c.id == change.run_id, runs.c.status == source.value)
            .values(values)
        )
        if result.rowcount == 1:
            break
    else:
        return False
    if change.to is not None:
        conn.execute(
            insert(run_events).values(
                run_id=change.run_id,
                at=change.at,
                from_status=source.value,
                to_status=change.to.value,
                reason=change.reason,
            )
        )
    return True


def _likeliest_first(status: RunStatus) -> int:
    """RUNNING rows end far more often than PENDING ones fail: try them in this order."""
    return _SOURCE_ORDER.get(status, len(_SOURCE_ORDER))


_SOURCE_ORDER = {RunStatus.RUNNING: 0, RunStatus.PENDING: 1}


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
        deps = _dependency_kinds(after, after_any)
        for _ in range(WRITE_ATTEMPTS):
            ids = [new_run_id() for _ in new_runs]
            now = utcnow()

            def work(conn: Connection, ids: list[str] = ids, now: datetime = now) -> None:
                _check_dependencies_exist(conn, deps)
                conn.execute(
                    insert(runs),
                    [
                        {
                            "id": run_id,
                            "name": new.name,
                            "status": RunStatus.PENDING.value,
                            "config_json": new.config_json,
                            "template": new.template,
                            "created_at": now,
                            "priority": new.priority,
                            "sweep_id": sweep_id,
                        }
                        for run_id, new in zip(ids, new_runs, strict=True)
                    ],
                )
                if deps:
                    conn.execute(
                        insert(run_dependencies),
                        [
                            {"run_id": run_id, "depends_on": dep, "kind": kind}
                            for run_id in ids
                            for dep, kind in deps.items()
                        ],
                    )
                conn.execute(
                    insert(run_events),
                    [
                        {
                            "run_id": run_id,
                            "at": now,
                            "from_status": None,
                            "to_status": RunStatus.PENDING.value,
                            "reason": "submitted",
                        }
                        for run_id in ids
                    ],
                )

            try:
                self._write(work)
            except IntegrityError:
                continue  # an id collision: 48 random bits make this all but impossible
            by_id = {r.id: r for r in self.get_many(ids)}
            return [by_id[i] for i in ids]
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

    def resolve_id(self, typed: str, *, sweep: bool = False) -> str:
        """The run (or sweep) id that `typed` is or uniquely starts (supervisor.db.lookup)."""
        with self._read() as conn:
            return lookup.resolve(conn, typed, sweep=sweep)

    def list_runs(
        self, status: str | None = None, limit: int | None = None, sweep_id: str | None = None
    ) -> list[RunRecord]:
        """Runs, newest first, optionally of one status and of one sweep."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id)
        if status is not None:
            query = query.where(runs.c.status == status)
        if sweep_id is not None:
            query = query.where(runs.c.sweep_id == sweep_id)
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

    def count_status(self, status: RunStatus) -> int:
        """How many runs have this status."""
        query = select(func.count()).select_from(runs).where(runs.c.status == status.value)
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def counts(self) -> dict[str, int]:
        """How many runs there are of each status."""
        query = select(runs.c.status, func.count()).group_by(runs.c.status)
        with self._read() as conn:
            return {str(status): int(n) for status, n in conn.execute(query)}

    def run_stats(
        self, templates: Iterable[str], other: str, bounds: Sequence[float], now: datetime
    ) -> RunStats:
        """The metrics' figures (supervisor.db.stats), read in one short read transaction."""
        with self._read() as conn:
            return read_run_stats(conn, templates, other, bounds, now)

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
        """PENDING or RUNNING runs somebody asked to cancel (read through a partial index)."""
        # INDEXED BY: without ANALYZE statistics the planner prefers the status index, which
        # walks every waiting run.
        query = text(
            f"SELECT * FROM runs INDEXED BY {CANCEL_INDEX_NAME} WHERE {CANCEL_REQUESTED_SQL}"
        ).columns(*runs.c)
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

    # -- the queue (SPEC section 11) -------------------------------------------

    def pending_runs(
        self,
        limit: int,
        *,
        now: datetime | None = None,
        skip_templates: Iterable[str] = (),
        room: Mapping[str, int] | None = None,
    ) -> list[RunRecord]:
        """Up to `limit` unclaimed PENDING runs that may start now, in queue order.

        Queue order is highest priority (NULL = 0) then oldest; a run waits while its
        `not_before` is in the future, while a run it depends on is not final (or, for afterok,
        not COMPLETED), and while its template is in `skip_templates` (paused or full).
        `room` bounds how many runs of a template are returned. The walk follows ix_runs_queue
        and stops after `limit` usable rows (no sort of every PENDING row).
        """
        when = (now or utcnow()).strftime(TIMESTAMP_FORMAT)
        query = (
            select(runs)
            .where(
                runs.c.status == RunStatus.PENDING.value,
                runs.c.launch_claimed_at.is_(None),
                # Other programs may write ISO's "T"; SQLAlchemy's text form has a space.
                or_(runs.c.not_before.is_(None), func.replace(runs.c.not_before, "T", " ") <= when),
                ~_unmet_dependency().exists(),
            )
            .order_by(*QUEUE_ORDER)
        )
        skipped = sorted(set(skip_templates))
        if skipped:
            query = query.where(runs.c.template.not_in(skipped))
        left = dict(room or {})
        picked: list[RunRecord] = []
        with self._read() as conn:
            for row in conn.execute(query):  # rows are fetched as the walk goes on
                record = _record(row)
                if record.template in left:
                    if left[record.template] <= 0:
                        continue
                    left[record.template] -= 1
                picked.append(record)
                if len(picked) >= limit:
                    break
        return picked

    def running_templates(self) -> dict[str, str]:
        """Run id -> template of every RUNNING run (for max_concurrent)."""
        query = select(runs.c.id, runs.c.template).where(runs.c.status == RunStatus.RUNNING.value)
        with self._read() as conn:
            return {str(i): str(t) for i, t in conn.execute(query)}

    def doomed_dependents(self) -> list[Dependency]:
        """Dependencies that can never be met by unclaimed PENDING runs: an afterok on a run
        that ended FAILED or CANCELLED, or on a run that does not exist."""
        d = run_dependencies
        dep_status = _status_of(d.c.depends_on)
        query = (
            select(d.c.run_id, d.c.depends_on, d.c.kind, dep_status.label("status"))
            .where(
                _is_unclaimed_pending(d.c.run_id),
                or_(
                    dep_status.is_(None),
                    and_(
                        _is_after_ok(d.c.kind),
                        dep_status.in_([RunStatus.FAILED.value, RunStatus.CANCELLED.value]),
                    ),
                ),
            )
            .order_by(d.c.run_id, d.c.depends_on)
        )
        with self._read() as conn:
            return [_dependency(r) for r in conn.execute(query)]

    def pending_dependency_edges(self) -> list[tuple[str, str]]:
        """(run, depends_on) where both are PENDING: where a dependency cycle can hide."""
        d = run_dependencies
        pending = RunStatus.PENDING.value
        query = select(d.c.run_id, d.c.depends_on).where(
            _status_of(d.c.run_id) == pending, _status_of(d.c.depends_on) == pending
        )
        with self._read() as conn:
            return [(str(a), str(b)) for a, b in conn.execute(query)]

    def dependency_marker(self) -> tuple[int, int]:
        """(rows, highest rowid) of run_dependencies: changes when another program adds some."""
        query = text("SELECT count(*), coalesce(max(rowid), 0) FROM run_dependencies")
        with self._read() as conn:
            row = conn.execute(query).one()
        return int(row[0]), int(row[1])

    def have_dependents(self, run_ids: Sequence[str]) -> bool:
        """True if any run depends on one of these."""
        if not run_ids:
            return False
        d = run_dependencies
        query = select(d.c.run_id).where(d.c.depends_on.in_(list(run_ids))).limit(1)
        with self._read() as conn:
            return conn.execute(query).first() is not None

    def dependencies_of(self, run_id: str) -> list[Dependency]:
        """What a run waits for, with each dependency's status now."""
        dep = runs.alias("dep")
        d = run_dependencies
        query = (
            select(d.c.run_id, d.c.depends_on, d.c.kind, dep.c.status)
            .select_from(d.outerjoin(dep, dep.c.id == d.c.depends_on))
            .where(d.c.run_id == run_id)
            .order_by(d.c.depends_on)
        )
        with self._read() as conn:
            return [_dependency(r) for r in conn.execute(query)]

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
        query = select(queue_pauses).order_by(
            queue_pauses.c.scope != QUEUE_ALL, queue_pauses.c.scope
        )
        with self._read() as conn:
            return [
                Pause(scope=str(r.scope), paused_at=r.paused_at, reason=r.reason)
                for r in conn.execute(query)
            ]

    def pause(self, scope: str, reason: str | None = None) -> bool:
        """Stop starting runs of `scope` (`*` or a template); False if it was paused already."""

        def work(conn: Connection) -> bool:
            found = conn.execute(
                select(queue_pauses.c.scope).where(queue_pauses.c.scope == scope)
            ).first()
            if found is not None:
                return False
            conn.execute(
                insert(queue_pauses).values(scope=scope, paused_at=utcnow(), reason=reason)
            )
            return True

        return self._write(work)

    def resume(self, scope: str) -> bool:
        """Start runs of `scope` again; False if it was not paused."""

        def work(conn: Connection) -> bool:
            result = conn.execute(delete(queue_pauses).where(queue_pauses.c.scope == scope))
            return int(result.rowcount) > 0

        return self._write(work)

    def final_events_since(self, after_id: int) -> tuple[list[str], int]:
        """Runs that reached a final status in run_events rows after `after_id`; the new cursor."""
        query = (
            select(run_events.c.id, run_events.c.run_id)
            .where(
                run_events.c.id > after_id,
                run_events.c.to_status.in_([s.value for s in FINAL_STATUSES]),
            )
            .order_by(run_events.c.id)
        )
        with self._read() as conn:
            rows = list(conn.execute(query))
            last = conn.execute(select(func.max(run_events.c.id))).scalar()
        ids = list(dict.fromkeys(str(r.run_id) for r in rows))
        return ids, max(int(last or 0), after_id)

    def queue_marker(self) -> tuple[int, int]:
        """Changes whenever a run may have become startable: (PRAGMA data_version, which moves
        with every other program's commit; the newest run_events id that is not a start)."""
        with self._read() as conn:
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

    def last_event_id(self) -> int:
        """The newest run_events id (0 when there is none)."""
        with self._read() as conn:
            return int(conn.execute(select(func.max(run_events.c.id))).scalar() or 0)

    def next_not_before(self, now: datetime) -> datetime | None:
        """The earliest not_before still to come of an unclaimed PENDING run, if any."""
        when = now.strftime(TIMESTAMP_FORMAT)
        query = select(func.min(func.replace(runs.c.not_before, "T", " "))).where(
            runs.c.status == RunStatus.PENDING.value,
            runs.c.launch_claimed_at.is_(None),
            func.replace(runs.c.not_before, "T", " ") > when,
        )
        with self._read() as conn:
            return parse_timestamp(conn.execute(query).scalar())

    def unhooked_runs(self, templates: Iterable[str] | None, since: datetime) -> list[RunRecord]:
        """Final runs whose on_finish hook has not run, ended after `since`, of these templates
        (None: any)."""
        query = select(runs).where(
            runs.c.status.in_([s.value for s in FINAL_STATUSES]),
            runs.c.hook_done_at.is_(None),
            runs.c.completed_at >= since,
        )
        if templates is not None:
            query = query.where(runs.c.template.in_(sorted(templates)))
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

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
        others, ours = self.look()
        return others or ours

    def look(self) -> tuple[bool, bool]:
        """(another program committed, this store changed statuses) since the last call."""
        if not self._sqlite:
            return True, True
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
        ours = writes != self._last_writes
        self._last_writes = writes
        return version != last, ours

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


def _is_busy(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message
