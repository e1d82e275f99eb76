"""The plain values the store reads and writes: run rows, events, claims, new runs, pauses and
dependencies, and how a row's values become them (other programs write rows too)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, get_type_hints

from sqlalchemy import Row

from supervisor.errors import ValidationError
from supervisor.states import FINAL_STATUSES

RUN_ID_BYTES = 6  # 12 lowercase hex characters (SPEC section 3)


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


def record_of(row: Row[Any]) -> RunRecord:
    """A `runs` row as a RunRecord, each value read leniently (see field_converters)."""
    m = row._mapping
    return RunRecord(**{name: read(m[name]) for name, read in _RECORD_CONVERTERS.items()})


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
