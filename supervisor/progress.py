"""The one reader of progress.jsonl: offsets, partial lines, bad lines (SPEC section 5).

Knows no database. `ProgressTail.read()` returns plain `ProgressRecord`s for the
lines appended since the last call; `ProgressState.apply()` folds them into the
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

import errno
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

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
MAX_REFUSAL_LOGS: Final = 20
"""Refusals one tail logs; a simulation flipping its file's type on purpose cannot flood the log."""

log = structlog.get_logger(__name__)

KNOWN_TYPES: Final = frozenset(
    {"start", "erlang_start", "iteration", "erlang_complete", "complete", "error"}
)

_GONE: Final = (-1, -1)
"""`_ident` once the file read was seen gone: equal to no real (st_dev, st_ino)."""

# O_NONBLOCK: a FIFO swapped in between lstat and open must not block the open.
# O_NOCTTY: a terminal swapped in must never become our controlling tty.
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


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

    def apply(self, rec: ProgressRecord) -> ProgressState:
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


_KINDS: Final = (
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words for the log."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "special file"


def parse_line(line: bytes) -> ProgressRecord | None:
    """One line (newline optional) as a record; None if bad, blank or carrying nothing we use."""
    result = _classify(line)
    return result if isinstance(result, ProgressRecord) else None


class ProgressTail:
    """Incremental reader of one progress.jsonl; open, read, close on every call.

    `offset` is the byte offset of the first byte not yet consumed as a complete
    line; a new tail created with it resumes exactly (bytes of an incomplete last
    line are kept in memory, not re-read, but are not counted in `offset`).
    A file that shrank below what was read, or was replaced by another inode,
    is read again from 0. A file that is not a regular one (symlink, FIFO, ...) is
    refused on every read and logged once per condition, again after it was readable.
    """

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
        if offset < 0 or max_line_bytes < 1 or max_read_bytes < 1:
            raise ValueError("offset must be >= 0 and limits >= 1")
        self.path = path
        self.run_id = run_id
        self.offset = offset
        self.bad_lines = 0
        self.refused: str | None = None  # why the last read() refused the file, else None
        self.refusals = 0  # reads refused so far (symlink, FIFO, device, OS error)
        self.restarts = 0  # times the file shrank or was replaced and was re-read from 0
        self._max_line = max_line_bytes
        self._max_read = max_read_bytes
        self._pos = offset  # next byte to read from disk (>= offset)
        self._pending = b""  # bytes of the incomplete last line, from offset to _pos
        self._discarding = False  # inside an over-long line: drop bytes until a newline
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) last read
        self._more = False
        # The refusal last logged; a missing file in between keeps it (same condition).
        self._condition: str | None = None
        self._refusal_logs = 0

    @property
    def more(self) -> bool:
        """True when the last read stopped at max_read_bytes and more bytes are waiting."""
        return self._more

    def read_to_end(self) -> list[ProgressRecord]:
        """Records of everything appended so far, in as many bounded reads as that takes."""
        out = self.read()
        while self._more:
            out += self.read()
        return out

    def read(self) -> list[ProgressRecord]:
        """Records of the complete lines appended since the last call; never raises for files."""
        self._more = False
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self.refused = None  # not there yet: normal before the run writes
            self._forget_file()
            return []
        except OSError as exc:
            return self._refuse("lstat failed", exc.strerror)
        if not stat.S_ISREG(st.st_mode):
            # lstat first so that a symlink, FIFO or device is never even opened.
            return self._refuse_type(st.st_mode)
        self._readable()
        ident = (st.st_dev, st.st_ino)
        if ident == self._ident and st.st_size == self._pos:
            return []  # fast path: nothing appended, no open needed
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except FileNotFoundError:
            self._forget_file()
            return []
        except OSError as exc:  # ELOOP: replaced by a symlink since lstat
            if exc.errno == errno.ELOOP:
                return self._refuse_type(stat.S_IFLNK)
            return self._refuse("open failed", exc.strerror)
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                return self._refuse_type(fst.st_mode)
            return self._read_fd(fd, fst)
        except OSError as exc:
            return self._refuse("read failed", exc.strerror)
        finally:
            os.close(fd)

    def _refuse_type(self, mode: int) -> list[ProgressRecord]:
        """Refuse a file that is not a regular one, naming what it is."""
        kind = _file_kind(mode)
        self._forget_file()
        return self._refuse(kind, f"not a regular file (mode {stat.filemode(mode)})")

    def _refuse(self, condition: str, detail: str | None) -> list[ProgressRecord]:
        """Record a refused read, log it if the condition is new, and return no records."""
        reason = f"{condition}: {detail}"
        self.refused = reason
        self.refusals += 1
        if condition != self._condition:
            self._condition = condition
            self._log_refusal(reason)
        return []

    def _forget_file(self) -> None:
        """The file read so far is gone from the path: the next regular file there is new."""
        # Even with the same (st_dev, st_ino): a freed inode number is soon handed out again.
        if self._ident is not None:
            self._ident = _GONE

    def _log_refusal(self, reason: str) -> None:
        """One warning per new condition, up to MAX_REFUSAL_LOGS, then one line saying so."""
        self._refusal_logs += 1
        ids = {} if self.run_id is None else {"run_id": self.run_id}
        if self._refusal_logs <= MAX_REFUSAL_LOGS:
            log.warning("progress_file_refused", **ids, path=str(self.path), reason=reason)
        elif self._refusal_logs == MAX_REFUSAL_LOGS + 1:
            log.warning("progress_file_refusals_muted", **ids, path=str(self.path))

    def _readable(self) -> None:
        """The file is a regular one again: a later refusal is a new condition."""
        self.refused = None
        if self._condition is not None:
            self._condition = None
            if self._refusal_logs <= MAX_REFUSAL_LOGS:
                ids = {} if self.run_id is None else {"run_id": self.run_id}
                log.info("progress_file_readable_again", **ids, path=str(self.path))

    def _restart(self) -> None:
        """Forget everything read: the file shrank or is another file now."""
        self.offset = 0
        self._pos = 0
        self._pending = b""
        self._discarding = False
        self.restarts += 1

    def _read_fd(self, fd: int, fst: os.stat_result) -> list[ProgressRecord]:
        """Read at most max_read_bytes from the open regular file and consume them."""
        ident = (fst.st_dev, fst.st_ino)
        replaced = self._ident is not None and ident != self._ident
        self._ident = ident
        if replaced or fst.st_size < self._pos:
            self._restart()
        want = min(fst.st_size - self._pos, self._max_read)
        if want <= 0:
            return []
        data = os.pread(fd, want, self._pos)
        records = self._consume(data)
        self._more = self._pos < fst.st_size
        return records

    def _consume(self, data: bytes) -> list[ProgressRecord]:
        """Split freshly read bytes into lines, keep the incomplete tail, classify the rest."""
        base = self._pos
        self._pos += len(data)
        start = 0
        records: list[ProgressRecord] = []
        if self._discarding or self._pending:
            nl = data.find(b"\n")
            if nl < 0:
                self._hold(data)
                return records
            if self._discarding:
                self._discarding = False
                self.bad_lines += 1
            else:
                self._line(self._pending + data[:nl], records)
                self._pending = b""
            start = nl + 1
            self.offset = base + start
        last = data.rfind(b"\n", start)
        if last >= 0:
            for line in data[start:last].split(b"\n"):
                self._line(line, records)
            start = last + 1
            self.offset = base + start
        self._hold(data[start:])
        return records

    def _hold(self, tail: bytes) -> None:
        """Keep bytes of an incomplete line, or drop them once the line is over-long."""
        if self._discarding:
            return
        pending = self._pending + tail if self._pending else tail
        if len(pending) > self._max_line:
            # Counted when its newline arrives, so chunking never changes the count.
            self._pending = b""
            self._discarding = True
        else:
            self._pending = pending

    def _line(self, line: bytes, records: list[ProgressRecord]) -> None:
        """Classify one complete line (without its newline) into records or bad_lines."""
        if len(line) > self._max_line:
            self.bad_lines += 1
            return
        result = _classify(line)
        if result is None:
            self.bad_lines += 1
        elif isinstance(result, ProgressRecord):
            records.append(result)
