"""The one reader of progress.jsonl: its lines, bad lines (SPEC section 5); offsets, partial
lines and odd files are supervisor.progress.filetail's, as for the run's log.

Knows no database. `ProgressTail.read()` returns plain `ProgressRecord`s for the
lines appended since the last call; `ProgressState.fold()` folds them into the
latest values the daemon copies into a run's columns.

Line classification (decided here, see SPEC 5):

* record   -- a JSON object with a known `type`, or with any of `erlang`,
  `iteration`, `total_erlangs`, `total_iterations`, `erlang_index` (no type,
  `"type": null` or an unknown type; such records get `type=None`).
  `erlang_index` (sent by erlang_start/iteration/erlang_complete, see SPEC 5)
  is carried too: the runs table has a column for it.
* ignored  -- blank lines, and JSON objects that carry nothing we use (e.g.
  `{"ts": ...}` or an unknown type without progress fields). Not counted.
* bad      -- not UTF-8, not JSON, not an object, NaN/Infinity, a used field of
  the wrong type or out of range, or longer than `max_line_bytes`. Skipped and
  counted in `ProgressTail.bad_lines`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from supervisor.progress.filetail import GrowingFileTail

MAX_LINE_BYTES: Final = 1024 * 1024
"""A longer line (without its newline) is skipped and counted."""
MAX_READ_BYTES: Final = 4 * 1024 * 1024
"""At most this much is read per `ProgressTail.read()` call, so one pass is bounded."""
MAX_INT: Final = 2**63 - 1
"""Largest accepted integer value: what a SQLite INTEGER column can hold."""
MAX_MESSAGE_CHARS: Final = 8192
"""An error message is cut to this many characters; the rest is noise for a column."""
NO_MESSAGE: Final = "simulation reported an error without a message"
"""`last_error` for an `error` record that has no `message`."""
KNOWN_TYPES: Final = frozenset(
    {"start", "erlang_start", "iteration", "erlang_complete", "complete", "error"}
)


@dataclass(frozen=True, slots=True)
class ProgressRecord:
    """One accepted line of progress.jsonl, only the fields the daemon uses."""

    type: str | None
    erlang: float | None = None
    total_erlangs: int | None = None
    iteration: int | None = None
    total_iterations: int | None = None
    message: str | None = None
    exit_code: int | None = None
    erlang_index: int | None = None  # 0-based position of `erlang` among the run's loads


@dataclass(frozen=True, slots=True)
class ProgressState:
    """Latest value of each progress column of a run."""

    current_erlang: float | None = None
    total_erlangs: int | None = None
    current_iteration: int | None = None
    total_iterations: int | None = None
    last_error: str | None = None
    erlang_index: int | None = None
    completed_ok: bool = False  # the last record read is `complete` with exit_code 0

    def fold(self, rec: ProgressRecord) -> ProgressState:
        """Return the state with one record folded in (a field absent from it keeps its value)."""
        # Built directly: dataclasses.replace() costs several times more, per line.
        last_error = self.last_error
        if rec.type == "error":
            last_error = rec.message if rec.message is not None else NO_MESSAGE
        iteration = self.current_iteration if rec.iteration is None else rec.iteration
        index = self.erlang_index if rec.erlang_index is None else rec.erlang_index
        if rec.type == "erlang_start":
            # A new load starts with no iteration done: the previous load's count is stale.
            iteration = 0 if rec.iteration is None else rec.iteration
            if rec.erlang_index is None:
                # SPEC's records need not carry erlang_index: count the loads started instead.
                index = 0 if self.erlang_index is None else self.erlang_index + 1
        return ProgressState(
            current_erlang=self.current_erlang if rec.erlang is None else rec.erlang,
            total_erlangs=self.total_erlangs if rec.total_erlangs is None else rec.total_erlangs,
            current_iteration=iteration,
            total_iterations=(
                self.total_iterations if rec.total_iterations is None else rec.total_iterations
            ),
            last_error=last_error,
            erlang_index=index,
            completed_ok=rec.type == "complete" and rec.exit_code == 0,
        )


class _Bad(Exception):
    """A line that is skipped and counted."""


# Returned by _classify for a valid object that carries nothing we use.
_IGNORED: Final = object()


def _reject_constant(name: str) -> Any:
    """json parse_constant hook: NaN, Infinity and -Infinity are not valid JSON values."""
    raise _Bad(name)


def _count(obj: dict[str, Any], key: str) -> int | None:
    """A non-negative integer field (bool and 3.0 are wrong types), or None when absent."""
    if key not in obj:
        return None
    value = obj[key]
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise _Bad(key)
    return value


def _signed_int(obj: dict[str, Any], key: str) -> int | None:
    """An integer field that may be negative (exit codes), or None when absent."""
    if key not in obj:
        return None
    value = obj[key]
    if type(value) is not int or not -MAX_INT <= value <= MAX_INT:
        raise _Bad(key)
    return value


def _erlang(obj: dict[str, Any]) -> float | None:
    """The offered load: a finite non-negative int or float (not bool), as float."""
    if "erlang" not in obj:
        return None
    value = obj["erlang"]
    if type(value) is not int and type(value) is not float:
        raise _Bad("erlang")
    try:
        result = float(value)
    except OverflowError:  # an int too large for a double
        raise _Bad("erlang") from None
    if not math.isfinite(result) or result < 0:  # 1e400 parses to inf
        raise _Bad("erlang")
    return result


def _message(obj: dict[str, Any]) -> str | None:
    """An error record's message, cut and made encodable (JSON allows lone surrogates)."""
    if "message" not in obj:
        return None
    value = obj["message"]
    if not isinstance(value, str):
        raise _Bad("message")
    value = value[:MAX_MESSAGE_CHARS]
    return value.encode("utf-8", "replace").decode("utf-8")


# Built once: json.loads(..., parse_constant=...) would build a decoder on every call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
# The C scanner behind _DECODER; calling it directly skips decode()'s regex passes,
# about a third of the parse cost of a typical line (typeshed does not declare it).
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_WS: Final = " \t\r\n"


def _decode(line: bytes) -> Any:
    """Parse a line as strict UTF-8 JSON; raise _Bad for anything else."""
    try:
        # Decode first: json.loads(bytes) would also accept UTF-16 and UTF-32.
        text = line.decode("utf-8")
        if not text.startswith("{"):
            # Leading whitespace or not an object: the full (slower) path decides.
            return _DECODER.decode(text)
        # Deep nesting raises RecursionError; huge ints ValueError (int digit limit).
        obj, end = _SCAN(text, 0)
    except (ValueError, RecursionError, StopIteration):  # StopIteration: no value at 0
        raise _Bad("json") from None
    if end != len(text) and text[end:].strip(_JSON_WS):
        raise _Bad("trailing data")
    return obj


def _classify(line: bytes) -> ProgressRecord | object | None:
    """A record, _IGNORED (valid, nothing we use, or blank) or None (bad line)."""
    if not line or line.isspace():
        return _IGNORED
    try:
        obj = _decode(line)
        if not isinstance(obj, dict):
            raise _Bad("not an object")
        return _from_object(obj)
    except _Bad:
        return None


def _from_object(obj: dict[str, Any]) -> ProgressRecord | object:
    """Build a record from a parsed object, or _IGNORED; raises _Bad on a wrong field."""
    kind = obj.get("type")
    if kind is not None and not isinstance(kind, str):
        raise _Bad("type")
    erlang = _erlang(obj)
    total_erlangs = _count(obj, "total_erlangs")
    iteration = _count(obj, "iteration")
    total_iterations = _count(obj, "total_iterations")
    erlang_index = _count(obj, "erlang_index")
    message = _message(obj) if kind == "error" else None
    exit_code = _signed_int(obj, "exit_code") if kind == "complete" else None
    if kind == "start" and "config" in obj:
        config = obj["config"]
        if not isinstance(config, dict):
            raise _Bad("config")
        # A top-level total wins over the one in config when both are given.
        cfg_erlangs = _count(config, "total_erlangs")
        cfg_iterations = _count(config, "total_iterations")
        total_erlangs = total_erlangs if total_erlangs is not None else cfg_erlangs
        total_iterations = total_iterations if total_iterations is not None else cfg_iterations
    if kind not in KNOWN_TYPES:
        # A present progress field is never None once validated, so this tests presence.
        fields = (erlang, total_erlangs, iteration, total_iterations, erlang_index)
        if fields == (None, None, None, None, None):
            return _IGNORED
        kind = None  # unknown types are reported as untyped progress
    return ProgressRecord(
        type=kind,
        erlang=erlang,
        total_erlangs=total_erlangs,
        iteration=iteration,
        total_iterations=total_iterations,
        message=message,
        exit_code=exit_code,
        erlang_index=erlang_index,
    )


def parse_line(line: bytes) -> ProgressRecord | None:
    """One line (newline optional) as a record; None if bad, blank or carrying nothing we use."""
    result = _classify(line)
    return result if isinstance(result, ProgressRecord) else None


class ProgressTail(GrowingFileTail[ProgressRecord]):
    """Incremental reader of one progress.jsonl (a GrowingFileTail: offsets, partial lines,
    missing, replaced, cut and refused files as it says); each complete line is classified
    (see the module docstring) and bad ones counted in `bad_lines`, over-long ones too.
    """

    LOG_NAME = "progress_file"

    def __init__(
        self,
        path: Path,
        offset: int = 0,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_read_bytes: int = MAX_READ_BYTES,
        run_id: str | None = None,
    ) -> None:
        """Prepare to read `path` from `offset`; touches nothing on disk. `run_id` is for logs."""
        super().__init__(
            path,
            offset,
            max_line_bytes=max_line_bytes,
            max_read_bytes=max_read_bytes,
            run_id=run_id,
        )
        self.bad_lines = 0

    def _long_line(self) -> None:
        self.bad_lines += 1

    def _record_line(self, line: bytes, records: list[ProgressRecord]) -> None:
        """Classify one complete line into records or bad_lines."""
        result = _classify(line)
        if result is None:
            self.bad_lines += 1
        elif isinstance(result, ProgressRecord):
            records.append(result)
