"""Progress from a simulation's output lines: `progress_patterns` (SPEC section 12).

Knows no database. `compile_patterns()` turns a template's patterns into an `OutputPatterns`
(RE2: matching is linear in the line; a pattern that would need backtracking does not
compile and is refused). `OutputPatterns.match()` turns one line into `ProgressRecord`s, the
same records progress.jsonl gives, so `ProgressState.fold()` folds both sources alike.
`OutputTail` reads the complete lines appended to `logs/sim.log` since the last call.

How a match becomes a record (decided here; SPEC 12 leaves it open):

* the groups that took part in the match are converted: `erlang` to a finite float >= 0,
  `total_erlangs`, `iteration`, `total_iterations`, `erlang_index` to whole numbers >= 0,
  `erlang_number` (1-based) to `erlang_index` = n - 1 (so n >= 1). A group whose text is not
  such a number makes the whole line skipped and counted as a bad line;
* a match with an `error` group is an `error` record (message: the group's text);
* a match that carries a load's position (`erlang_index` or `erlang_number`) but no
  `iteration` starts that load: an `erlang_start` record, so the iteration count goes back
  to 0 as it does for progress.jsonl;
* anything else is an untyped progress record; a match in which no known group took part
  gives nothing;
* a line that several patterns match gives one record per pattern, in the patterns' order.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import re2
import structlog

from supervisor.errors import ConfigError
from supervisor.progress.filetail import GrowingFileTail
from supervisor.progress.jsonl import MAX_INT, MAX_MESSAGE_CHARS, ProgressRecord

MAX_LINE_BYTES: Final = 64 * 1024
"""A longer output line (without its newline) is skipped (SPEC 12), never held whole."""
MAX_READ_BYTES: Final = 1024 * 1024
"""At most this much of the log is read per `OutputTail.read()` call: one pass is bounded."""
ANCHOR_BYTES: Final = 64
"""The last bytes read are checked to be still in place before reading on (see OutputTail)."""
MAX_RESYNC_SCAN_BYTES: Final = 64 * 1024 * 1024
"""After the log was cut, at most this much of it is searched to find our place again."""
RESYNC_CHUNK_BYTES: Final = 1024 * 1024
"""The search reads the log in pieces of this size (bounded memory)."""
PREFILTER_MIN_BYTES: Final = 4096
"""Blocks smaller than this (a few lines, the usual read) are matched line by line."""
MAX_NUMBER_CHARS: Final = 64
"""A group's text longer than this is not a number we take (int() of it could be slow)."""

KNOWN_GROUPS: Final = frozenset(
    {"erlang", "total_erlangs", "iteration", "total_iterations", "erlang_index"}
    | {"erlang_number", "error"}
)
"""The group names SPEC 12 gives a meaning (see _FIELDS for what each fills)."""

# logcap's marker (not imported: logcap loads libc through ctypes; a test checks they agree).
LOGCAP_MARKER: Final = (
    b"\n\n[... runsup cut output here to keep this log under its max_log_bytes;"
    b" the start is above, the latest output below ...]\n\n"
)
_LOGCAP_MIN_BLOCK: Final = 512  # as logcap: cuts are multiples of max(st_blksize, 512)


log = structlog.get_logger(__name__)


class PatternError(ValueError):
    """A progress pattern that cannot be used; the message names the pattern and why."""


class _NotNumber(Exception):
    """A group's text is not the number its name asks for."""


@dataclass(frozen=True, slots=True)
class LineResult:
    """What one line gives: records, or why the line was skipped as bad (`problem`)."""

    records: tuple[ProgressRecord, ...] = ()
    problem: str | None = None


NO_MATCH: Final = LineResult()


_Field = tuple[int, str, str, "Callable[[str, bytes], Any]"]


@dataclass(frozen=True, slots=True)
class _Pattern:
    source: str
    regex: Any  # re2._Regexp over bytes (the binding ships no type hints)
    fields: tuple[_Field, ...]  # each known group: its number, name, record field, converter


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line to stderr for a refused pattern
    return options


def _reason(exc: Exception) -> str:
    """RE2's error text (the binding gives it as bytes)."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _compile_one(source: str) -> _Pattern:
    if not isinstance(source, str):
        raise PatternError(f"pattern {source!r}: expected a string")
    try:
        regex = re2.compile(source.encode("utf-8"), _options())
    except re2.error as exc:
        raise PatternError(
            f"pattern {source!r}: refused by RE2 (linear-time matching only, no "
            f"backreferences or lookaround): {_reason(exc)}"
        ) from None
    except UnicodeEncodeError:
        raise PatternError(f"pattern {source!r}: not encodable as UTF-8") from None
    index = {_text(k) if isinstance(k, bytes) else str(k): v for k, v in regex.groupindex.items()}
    names = tuple(index)
    unknown = sorted(n for n in names if n not in KNOWN_GROUPS)
    if unknown:
        raise PatternError(
            f"pattern {source!r}: unknown group name {unknown[0]!r} "
            f"(known: {', '.join(sorted(KNOWN_GROUPS))})"
        )
    if not names:
        raise PatternError(
            f"pattern {source!r}: no named group, so a match would say nothing "
            f"(use one of {', '.join(sorted(KNOWN_GROUPS))}, e.g. (?P<iteration>[0-9]+))"
        )
    if "erlang_index" in names and "erlang_number" in names:
        raise PatternError(f"pattern {source!r}: has both erlang_index and erlang_number; use one")
    return _Pattern(source, regex, tuple((index[n], n, *_FIELDS[n]) for n in names))


@dataclass(frozen=True)
class OutputPatterns:
    """A template's compiled progress patterns."""

    patterns: tuple[_Pattern, ...]
    # All patterns as one, unable to cross a newline: finds the lines worth matching in a
    # whole block at C speed, so lines that match nothing cost no Python work. None when a
    # pattern could match a line alone but not inside a block (see _prefilter).
    any_line: Any = None

    @property
    def sources(self) -> tuple[str, ...]:
        """The patterns as written in the configuration."""
        return tuple(p.source for p in self.patterns)

    def match(self, line: bytes) -> LineResult:
        """The records one line (without its newline) gives, or why it is skipped."""
        if line.endswith(b"\r"):
            line = line[:-1]  # CRLF output: `$` must still match at the end
        if not line.isascii():
            # RE2 matches UTF-8: an invalid byte would stop `.` and `\S` short. U+FFFD for it.
            line = line.decode("utf-8", "replace").encode("utf-8")
        records: list[ProgressRecord] = []
        for number, pattern in enumerate(self.patterns, 1):
            spans = pattern.regex._regexp.Match(_UNANCHORED, line, 0, len(line))
            if spans[0][0] < 0:
                continue  # the binding's search() costs twice this call: it wraps a generator
            try:
                record = _record(line, spans, pattern.fields)
            except _NotNumber as exc:
                return LineResult(problem=f"pattern {number}: {exc}")
            if record is not None:
                records.append(record)
        return LineResult(tuple(records)) if records else NO_MATCH

    def candidate_lines(self, block: bytes, max_line: int) -> list[bytes] | None:
        """The lines of `block` (lines joined by newlines) some pattern may match.

        None when the block must be matched line by line instead: a small block (the pass
        costs a call for each line it finds, more than it saves on a few lines), non-ASCII
        bytes (the line-by-line path replaces invalid UTF-8 first), a CR (it strips a CR
        before the newline) or a line that may be longer than max_line (it counts those).
        """
        regexp = self.any_line
        if (
            regexp is None
            or len(block) < PREFILTER_MIN_BYTES
            or not block.isascii()
            or b"\r" in block
        ):
            return None
        half = max(1, max_line // 2)
        # A line longer than max_line holds a whole aligned window of max_line/2 bytes.
        for i in range(0, len(block) - half + 1, half):
            if block.find(b"\n", i, i + half) < 0:
                return None
        out = []
        pos, end = 0, len(block)
        while pos <= end:
            start = regexp.Match(_UNANCHORED, block, pos, end)[0][0]
            if start < 0:
                break
            line_end = block.find(b"\n", start)
            if line_end < 0:
                line_end = end
            line_start = block.rfind(b"\n", pos, start) + 1 or pos  # -1 + 1: the line at pos
            out.append(block[line_start:line_end])
            pos = line_end + 1
        return out


_UNANCHORED: Final = re2._Anchor.UNANCHORED
# Constructs that mean something else inside a block than in a line alone: \A, \z (start
# and end of the text), \C (any byte, a newline too), or a flag turned off (e.g. (?-m)).
_BLOCK_UNSAFE: Final = re.compile(r"\\[AzCQ]|\(\?[a-zA-Z]*-")


def _prefilter(sources: tuple[str, ...]) -> Any:
    """The patterns as one multi-line, never-newline regexp; None when that would differ."""
    if not sources or any(_BLOCK_UNSAFE.search(s) for s in sources):
        return None
    options = _options()
    options.never_nl = True
    combined = "(?m)" + "|".join(f"(?:{s})" for s in sources)
    try:
        return re2.compile(combined.encode("utf-8"), options)._regexp
    except re2.error:  # e.g. too large together: line by line then
        return None


@functools.lru_cache(maxsize=64)
def _compile_cached(sources: tuple[str, ...]) -> OutputPatterns:
    return OutputPatterns(tuple(_compile_one(s) for s in sources), _prefilter(sources))


def compile_patterns(sources: Iterable[str]) -> OutputPatterns:
    """Compile patterns (cached by their text); raises PatternError naming the bad one."""
    return _compile_cached(tuple(sources))


def check_patterns(value: object, where: str) -> tuple[str, ...]:
    """Validate a configuration value (a list of patterns); ConfigError names `where`."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    try:
        compile_patterns(value)
    except PatternError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return tuple(value)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _count(name: str, raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > MAX_NUMBER_CHARS:  # bytes.isdigit: ASCII 0-9 only
        raise _NotNumber(f"{name} {_text(raw)[:MAX_NUMBER_CHARS]!r} is not a whole number")
    value = int(raw)
    if value > MAX_INT:
        raise _NotNumber(f"{name} {value} is too large")
    return value


def _float(name: str, raw: bytes) -> float:
    # float() alone would take "nan", "inf", "1_000" and surrounding blanks.
    if (
        not raw
        or len(raw) > MAX_NUMBER_CHARS
        or raw.strip(b"0123456789.eE+-")
        or raw.strip() != raw
    ):
        raise _NotNumber(f"{name} {_text(raw)[:MAX_NUMBER_CHARS]!r} is not a number")
    try:
        value = float(raw)
    except ValueError:
        raise _NotNumber(f"{name} {_text(raw)!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise _NotNumber(f"{name} {_text(raw)!r} is not a finite number >= 0")
    return value


def _message(_name: str, raw: bytes) -> str | None:
    return _text(raw)[:MAX_MESSAGE_CHARS] or None  # empty: the record says NO_MESSAGE


def _position(name: str, raw: bytes) -> int:
    number = _count(name, raw)
    if number < 1:
        raise _NotNumber(f"{name} 0: it counts from 1")
    return number - 1


# Per group name: the ProgressRecord field it fills and how its text is converted.
_FIELDS: Final[dict[str, tuple[str, Callable[[str, bytes], Any]]]] = {
    "erlang": ("erlang", _float),
    "total_erlangs": ("total_erlangs", _count),
    "iteration": ("iteration", _count),
    "total_iterations": ("total_iterations", _count),
    "erlang_index": ("erlang_index", _count),
    "erlang_number": ("erlang_index", _position),
    "error": ("message", _message),
}


def _record(
    line: bytes, spans: Sequence[tuple[int, int]], fields: tuple[_Field, ...]
) -> ProgressRecord | None:
    """The record of one match; None when no known group took part."""
    values: dict[str, Any] = {}
    error = False
    for group, name, key, convert in fields:
        start, end = spans[group]
        if start < 0:
            continue  # an optional group that did not take part
        error = error or name == "error"
        values[key] = convert(name, line[start:end])
    if error:
        kind: str | None = "error"
    elif not values:
        return None
    elif "erlang_index" in values and "iteration" not in values:
        kind = "erlang_start"
    else:
        kind = None
    return ProgressRecord(type=kind, **values)


class OutputTail(GrowingFileTail[ProgressRecord]):
    """Incremental reader of a run's log that turns matching lines into progress records.

    A GrowingFileTail (offsets, bounded reads, partial lines, missing, replaced and refused
    files as it says); a line longer than `max_line_bytes` is counted in `long_lines`; a
    line a pattern matched with a non-number is counted in `bad_lines`.

    The log can be rewritten under us: the daemon's logcap cuts its middle (a block-aligned
    range) once it passes max_log_bytes. Before reading on, the last `ANCHOR_BYTES` read are
    checked to be still where they were; when they are not (or the file shrank), the tail
    finds its place again (`resyncs` counts this), never re-reading a line it gave:

    1. the anchor moved down by a multiple of the cut block, and is past logcap's marker
       line when there is one (we were in the kept tail): go on from its new place (the
       smallest shift that fits: rather skip a line than repeat one);
    2. else, logcap's marker is found at a block boundary (we were in the cut part): go on
       after it, past the few bytes of the anchor that may sit right after it;
    3. else (a foreign rewrite, or a saved offset that is no line start after a restart):
       go on from the next line that starts after the current end.
    """

    LOG_NAME = "output_log"

    def __init__(
        self,
        path: Path,
        patterns: OutputPatterns,
        offset: int = 0,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_read_bytes: int = MAX_READ_BYTES,
        run_id: str | None = None,
    ) -> None:
        """Prepare to read `path` from `offset`; touches nothing on disk. `run_id`: for logs."""
        super().__init__(
            path,
            offset,
            max_line_bytes=max_line_bytes,
            max_read_bytes=max_read_bytes,
            run_id=run_id,
        )
        self.patterns = patterns
        self.bad_lines = 0
        self.long_lines = 0
        self.resyncs = 0
        self._anchor = b""  # the last bytes before _pos, as read
        self._verify_resume = offset > 0  # fresh from a saved offset: check it is a line start

    def _read_new(self, fd: int, fst: os.stat_result) -> bytes:
        """Check our place is intact, then read at most max_read_bytes from it."""
        size = fst.st_size
        if self._verify_resume:
            self._verify_resume = False
            if not self._resume_ok(fd, size):
                self._resync(fd, size, _block(fst))
        if size < self._pos:
            self._shrunk(fd, fst)
        want = min(size - self._pos, self._max_read)
        if want <= 0:
            return b""
        keep = len(self._anchor)
        # One pread for the anchor and the new bytes: the check costs no extra call.
        data = os.pread(fd, keep + want, self._pos - keep)
        if data[:keep] != self._anchor:
            self._resync(fd, size, _block(fst))
            want = min(size - self._pos, self._max_read)
            if want <= 0:
                return b""
            data = os.pread(fd, want, self._pos)
        elif keep:
            data = data[keep:]
        if len(data) >= ANCHOR_BYTES:
            self._anchor = data[-ANCHOR_BYTES:]
        else:
            self._anchor = (self._anchor + data)[-ANCHOR_BYTES:]
        return data

    def _shrunk(self, fd: int, fst: os.stat_result) -> None:
        """Cut by logcap (or rewritten): find our place again rather than read it all again."""
        self._resync(fd, fst.st_size, _block(fst))

    # -- finding our place again -------------------------------------------------------

    def _jump(self, pos: int, offset: int) -> None:
        super()._jump(pos, offset)
        self._anchor = b""

    def _resume_ok(self, fd: int, size: int) -> bool:
        """A saved offset is a line start: the byte before it must be a newline."""
        return self.offset <= size and os.pread(fd, 1, self.offset - 1) == b"\n"

    def _resync(self, fd: int, size: int, block: int) -> None:
        """The bytes before our place changed: find it again (see the class docstring)."""
        self.resyncs += 1
        old = self._pos
        how = self._find_place(fd, size, block)
        log.info(
            "output_log_resynced", run_id=self.run_id, how=how, old_offset=old, offset=self._pos
        )

    def _find_place(self, fd: int, size: int, block: int) -> str:
        """Go to where reading goes on after a rewrite; says which way it was found."""
        anchor, behind = self._anchor, self._pos - self.offset
        if not anchor:  # fresh from a saved offset: nothing to recognise our place by
            self._skip_to_next_line(fd, size)
            return "skipped_to_end"
        marker = self._find_marker(fd, size, block, limit=min(size, self._pos))
        # Below the marker is the head we read long ago: our place cannot be there.
        floor = len(anchor) + (marker or 0)
        found = self._find_anchor(fd, size, anchor, block, floor)
        if found is not None:
            pending, discarding, counted = self._pending, self._discarding, self._count_discard
            self._jump(found, max(0, found - behind))
            self._pending, self._discarding, self._count_discard = pending, discarding, counted
            self._anchor = anchor
            return "moved_down"
        if marker is not None:
            n = _overlap(os.pread(fd, len(anchor), marker), anchor)
            self._jump(marker + n, marker + n)
            if n == 0:
                self._skip_rest_of_line()  # the cut left a fragment of a line here
            return "after_cut_marker"
        self._skip_to_next_line(fd, size)
        return "skipped_to_end"

    def _skip_rest_of_line(self) -> None:
        self._discarding = True
        self._count_discard = False

    def _find_anchor(self, fd: int, size: int, anchor: bytes, block: int, floor: int) -> int | None:
        """The highest place >= floor, whole blocks below ours, where the anchor ends."""
        alen = len(anchor)
        hi = self._pos - block * max(1, -(-(self._pos - size) // block))
        lowest = max(floor, hi - MAX_RESYNC_SCAN_BYTES)
        while hi >= lowest:
            lo = max(lowest - alen, hi - RESYNC_CHUNK_BYTES)
            window = os.pread(fd, hi - lo, lo)
            while hi - alen >= lo and hi >= lowest:
                if window[hi - alen - lo : hi - lo] == anchor:
                    return hi
                hi -= block
        return None

    def _find_marker(self, fd: int, size: int, block: int, *, limit: int) -> int | None:
        """The end of logcap's last marker at a block boundary up to `limit`, if any."""
        mlen = len(LOGCAP_MARKER)
        best = None
        end = block
        stop = min(size, limit + block, MAX_RESYNC_SCAN_BYTES)
        while end <= stop:
            if os.pread(fd, mlen, end - mlen) == LOGCAP_MARKER:
                best = end
            end += block
        return best

    def _skip_to_next_line(self, fd: int, size: int) -> None:
        """Go on from the first line that starts at or after the current end."""
        look = min(size, self._max_line + 1)
        nl = os.pread(fd, look, size - look).rfind(b"\n")
        start = size - look + nl + 1 if nl >= 0 else size
        self._jump(start, start)
        if nl < 0 and size > 0:
            self._skip_rest_of_line()  # the rest of a line we never saw the start of

    # -- lines ---------------------------------------------------------------------------

    def _lines(self, block: bytes, records: list[ProgressRecord]) -> None:
        lines = self.patterns.candidate_lines(block, self._max_line)
        for line in block.split(b"\n") if lines is None else lines:
            self._line(line, records)

    def _long_line(self) -> None:
        self.long_lines += 1

    def _record_line(self, line: bytes, records: list[ProgressRecord]) -> None:
        result = self.patterns.match(line)
        if result.problem is not None:
            self.bad_lines += 1
        else:
            records.extend(result.records)


def tail_for(
    patterns: Sequence[str], log_path: Path, offset: int = 0, *, run_id: str | None = None
) -> OutputTail | None:
    """The output tail a run of a template with these patterns needs; None without patterns."""
    if not patterns:
        return None
    return OutputTail(log_path, compile_patterns(patterns), offset, run_id=run_id)


def _block(fst: os.stat_result) -> int:
    """The unit logcap cuts this file in: max(st_blksize, 512)."""
    return max(fst.st_blksize, _LOGCAP_MIN_BLOCK)


def _overlap(head: bytes, anchor: bytes) -> int:
    """Length of the longest start of `head` that ends `anchor` at a line end (else 0)."""
    for n in range(min(len(head), len(anchor)), 0, -1):
        if head[n - 1 : n] == b"\n" and anchor.endswith(head[:n]):
            return n
    return 0
