"""The one reader of files that only grow: progress.jsonl (jsonl.ProgressTail) and a run's
log (patterns.OutputTail) are both a `GrowingFileTail`.

Knows no database and no line format. The base owns what every such file needs:

* the offset: `offset` is the byte offset of the first byte not yet consumed as a complete
  line; a new tail created with it resumes there (after a daemon restart);
* bounded reads: at most `max_read_bytes` a `read()` (`more` says bytes are waiting;
  `read_to_end()` goes on until none are);
* the partial line: bytes of an incomplete last line wait in memory (not counted in
  `offset`) for their newline; a line longer than `max_line_bytes` is dropped as it streams
  by, never held whole, and reported once its newline arrives (`_long_line`);
* the missing file: normal before the run writes; a file seen before and then gone is
  forgotten, so whatever regular file comes next at the path is new (read from 0) even if
  the kernel hands out the same inode number again;
* replacement and truncation: another inode at the path is read from 0 (`restarts`);
  a file that shrank below what was read is read from 0 too, unless a subclass knows
  better (`_shrunk`: the run's log is cut in its middle by logcap);
* refusal: a symlink, FIFO, device or socket is never opened (lstat first, O_NOFOLLOW and
  O_NONBLOCK on open); each refused read counts (`refusals`, `refused` says why) and each
  new condition is logged once, up to MAX_REFUSAL_LOGS a tail, with a line when the file
  is readable again.

A subclass says what a complete line gives (`_record_line`), may see a block of lines at
once (`_lines`), and names its log events (`LOG_NAME`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import ClassVar, Final, Generic, TypeVar

import structlog

MAX_REFUSAL_LOGS: Final = 20
"""Refusals one tail logs; a simulation flipping its file's type on purpose cannot flood the log."""

# O_NONBLOCK: a FIFO swapped in between lstat and open must not block the open.
# O_NOCTTY: a terminal swapped in must never become our controlling tty.
OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

_GONE: Final = (-1, -1)
"""`_ident` once the file read was seen gone: equal to no real (st_dev, st_ino)."""

_KINDS: Final = (
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)

log = structlog.get_logger(__name__)

R = TypeVar("R")


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words for the log."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "special file"


class GrowingFileTail(Generic[R]):
    """Incremental reader of one file that only grows; open, read, close on every call.

    Gives the records (`R`) of the complete lines appended since the last call. See the
    module docstring for what it does with partial lines, missing, replaced, cut and
    refused files.
    """

    LOG_NAME: ClassVar[str] = "file"  # log events: <LOG_NAME>_refused, _replaced, ...

    def __init__(
        self,
        path: Path,
        offset: int,
        *,
        max_line_bytes: int,
        max_read_bytes: int,
        run_id: str | None = None,
    ) -> None:
        """Prepare to read `path` from `offset`; touches nothing on disk. `run_id`: for logs."""
        if offset < 0 or max_line_bytes < 1 or max_read_bytes < 1:
            raise ValueError("offset must be >= 0 and limits >= 1")
        self.path = path
        self.run_id = run_id
        self.offset = offset
        self.refused: str | None = None  # why the last read() refused the file, else None
        self.refusals = 0  # reads refused so far (symlink, FIFO, device, OS error)
        self.restarts = 0  # times the file was replaced or shrank and was read from 0
        self._max_line = max_line_bytes
        self._max_read = max_read_bytes
        self._pos = offset  # next byte to read from disk (>= offset)
        self._pending = b""  # bytes of the incomplete last line, from offset to _pos
        self._discarding = False  # inside an over-long line: drop bytes until a newline
        self._count_discard = True  # False when skipping a line we saw only part of
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) last read
        self._more = False
        # The refusal last logged; a missing file in between keeps it (same condition).
        self._condition: str | None = None
        self._refusal_logs = 0

    @property
    def more(self) -> bool:
        """True when the last read stopped at max_read_bytes and more bytes are waiting."""
        return self._more

    def read_to_end(self) -> list[R]:
        """Records of everything appended so far, in as many bounded reads as that takes."""
        out = self.read()
        while self._more:
            out += self.read()
        return out

    def read(self) -> list[R]:
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
        if (st.st_dev, st.st_ino) == self._ident and st.st_size == self._pos:
            return []  # fast path: nothing appended, no open needed (a cut changes the size)
        try:
            fd = os.open(self.path, OPEN_FLAGS)
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

    # -- what a subclass says --------------------------------------------------------------

    def _record_line(self, line: bytes, records: list[R]) -> None:
        """Turn one complete line (no newline, at most max_line_bytes) into records."""
        raise NotImplementedError

    def _long_line(self) -> None:
        """A line longer than max_line_bytes went by (skipped)."""

    def _lines(self, block: bytes, records: list[R]) -> None:
        """Complete lines joined by newlines (a subclass may skip lines it can tell are of no
        use without looking at each)."""
        for line in block.split(b"\n"):
            self._line(line, records)

    def _read_new(self, fd: int, fst: os.stat_result) -> bytes:
        """The new bytes from our place, at most max_read_bytes; a file that shrank below our
        place is `_shrunk` first."""
        if fst.st_size < self._pos:
            self._shrunk(fd, fst)
        want = min(fst.st_size - self._pos, self._max_read)
        return os.pread(fd, want, self._pos) if want > 0 else b""

    def _shrunk(self, fd: int, fst: os.stat_result) -> None:
        """The file is shorter than what was read: by default, read it again from 0."""
        self._restart()

    def _jump(self, pos: int, offset: int) -> None:
        """Go on reading at `pos` with `offset` consumed, no partial line held."""
        self._pos = pos
        self.offset = offset
        self._pending = b""
        self._discarding = False
        self._count_discard = True

    # -- refusals ---------------------------------------------------------------------------

    def _refuse_type(self, mode: int) -> list[R]:
        """Refuse a file that is not a regular one, naming what it is."""
        kind = file_kind(mode)
        self._forget_file()
        return self._refuse(kind, f"not a regular file (mode {stat.filemode(mode)})")

    def _refuse(self, condition: str, detail: str | None) -> list[R]:
        """Record a refused read, log it if the condition is new, and return no records."""
        reason = f"{condition}: {detail}"
        self.refused = reason
        self.refusals += 1
        if condition != self._condition:
            self._condition = condition
            self._log_refusal(reason)
        return []

    def _log_refusal(self, reason: str) -> None:
        """One warning per new condition, up to MAX_REFUSAL_LOGS, then one line saying so."""
        self._refusal_logs += 1
        if self._refusal_logs <= MAX_REFUSAL_LOGS:
            log.warning(f"{self.LOG_NAME}_refused", **self._ids(), reason=reason)
        elif self._refusal_logs == MAX_REFUSAL_LOGS + 1:
            log.warning(f"{self.LOG_NAME}_refusals_muted", **self._ids())

    def _readable(self) -> None:
        """The file is a regular one again: a later refusal is a new condition."""
        self.refused = None
        if self._condition is not None:
            self._condition = None
            if self._refusal_logs <= MAX_REFUSAL_LOGS:
                log.info(f"{self.LOG_NAME}_readable_again", **self._ids())

    def _ids(self) -> dict[str, str]:
        """The fields every event of this tail carries."""
        ids = {"path": str(self.path)}
        if self.run_id is not None:
            ids["run_id"] = self.run_id
        return ids

    def _forget_file(self) -> None:
        """The file read so far is gone from the path: the next regular file there is new."""
        # Even with the same (st_dev, st_ino): a freed inode number is soon handed out again.
        if self._ident is not None:
            self._ident = _GONE

    def _restart(self) -> None:
        """Forget everything read: the file shrank or is another file now."""
        self._jump(0, 0)
        self.restarts += 1

    # -- reading ----------------------------------------------------------------------------

    def _read_fd(self, fd: int, fst: os.stat_result) -> list[R]:
        """Read at most max_read_bytes from the open regular file and consume them."""
        ident = (fst.st_dev, fst.st_ino)
        if self._ident is not None and ident != self._ident:
            self._restart()  # another file now: all of it is new
            log.info(f"{self.LOG_NAME}_replaced", **self._ids())
        self._ident = ident
        data = self._read_new(fd, fst)
        if not data:
            return []
        records = self._consume(data)
        self._more = self._pos < fst.st_size
        return records

    def _consume(self, data: bytes) -> list[R]:
        """Split freshly read bytes into lines, keep the incomplete tail, hand on the rest."""
        base = self._pos
        self._pos += len(data)
        start = 0
        records: list[R] = []
        if self._discarding or self._pending:
            nl = data.find(b"\n")
            if nl < 0:
                self._hold(data)
                return records
            if self._discarding:
                self._discarding = False
                if self._count_discard:
                    self._long_line()
                self._count_discard = True
            else:
                self._line(self._pending + data[:nl], records)
                self._pending = b""
            start = nl + 1
            self.offset = base + start
        last = data.rfind(b"\n", start)
        if last >= 0:
            self._lines(data[start:last], records)
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
            # Reported when its newline arrives, so chunking never changes the count.
            self._pending = b""
            self._discarding = True
        else:
            self._pending = pending

    def _line(self, line: bytes, records: list[R]) -> None:
        """One complete line (without its newline): too long, or the subclass's to read."""
        if len(line) > self._max_line:
            self._long_line()
            return
        self._record_line(line, records)
