"""`runsup logs ID [--follow]`: copy a run's `logs/sim.log` to stdout, and keep copying until
the run ends.

The log is streamed in chunks (it may be large), opened without following a symbolic link and
only when it is a regular file (a run directory is writable by the simulation; a planted link
or FIFO must not make `runsup logs` read elsewhere or hang). The daemon cuts the middle out of
a log that passes `max_log_bytes` (supervisor.progress.logcap): when the file is found shorter
than what was already printed, a note goes to stderr and following goes on from the file's new
end, where the old end now is. A closed pipe (`runsup logs ID | head`) ends the command quietly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

from supervisor.db import RunRecord, Store
from supervisor.rundir import log_path

# `--follow`: how often the log and the run's status are looked at again.
LOG_FOLLOW_INTERVAL_SECONDS = 0.25
COPY_CHUNK_BYTES = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Closed(Exception):
    """The reader of our stdout went away."""


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class JsonLines:
    """`logs --json`: the log as JSON Lines, `{"id": ..., "line": ...}` for each line (the
    bytes decoded as UTF-8, bad bytes replaced); a last line without its newline is written
    by finish()."""

    def __init__(self, run_id: str, out: BinaryIO) -> None:
        self.run_id = run_id
        self.out = out
        self._partial = b""

    def write(self, data: bytes, /) -> int:
        """Take a chunk of the log; write every line it completes."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._line(line)
        return len(data)

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace")
        self.out.write(json.dumps({"id": self.run_id, "line": text}).encode() + b"\n")

    def flush(self) -> None:
        """Flush what was written."""
        self.out.flush()

    def finish(self) -> None:
        """Write the last line even without its newline."""
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        self.out.flush()


def _copy_new(path: Path, offset: int, out: _Sink, err: TextIO) -> int:
    """Copy what the log holds past `offset`; returns the new offset."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return offset  # not created yet
        if exc.errno == errno.ELOOP:
            err.write(f"runsup: {path} is a symbolic link; not following it\n")
            return offset
        raise
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            err.write(f"runsup: {path} is not a regular file; not reading it\n")
            return offset
        if info.st_size < offset:
            err.write("runsup: [the log was cut in the middle (max_log_bytes); going on]\n")
            err.flush()
            offset = info.st_size
        fh.seek(offset)
        while chunk := fh.read(COPY_CHUNK_BYTES):
            try:
                out.write(chunk)
                out.flush()
            except BrokenPipeError:
                raise _Closed from None
            offset += len(chunk)
    return offset


def print_log(
    store: Store,
    run_id: str,
    *,
    follow: bool,
    out: BinaryIO | None = None,
    err: TextIO | None = None,
    interval: float = LOG_FOLLOW_INTERVAL_SECONDS,
    as_json: bool = False,
) -> int:
    """Print the run's log; with `follow`, until the run is final. Returns the exit code.

    `as_json`: JSON Lines (JsonLines) instead of the log's bytes.
    """
    raw = out if out is not None else sys.stdout.buffer
    lines = JsonLines(run_id, raw) if as_json else None
    stdout: _Sink = lines if lines is not None else raw
    stderr = err if err is not None else sys.stderr
    run = store.get(run_id)
    path = log_path(Path(run.run_dir)) if run.run_dir else None
    offset = 0
    try:
        while True:
            if path is not None:
                offset = _copy_new(path, offset, stdout, stderr)
            # The status is read before the last copy, so output written up to the end is
            # copied once more after the run is seen final.
            if not follow or run.is_final:
                break
            time.sleep(interval)
            run = store.get(run_id)
            if path is None and run.run_dir:
                path = log_path(Path(run.run_dir))
        if lines is not None:
            try:
                lines.finish()
            except BrokenPipeError:
                raise _Closed from None
    except _Closed:
        # Keep the interpreter from complaining when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    if path is None or (not path.exists() and not follow):
        stderr.write(no_log_words(run) + "\n")
    return 0


def no_log_words(run: RunRecord) -> str:
    """Why a run has no log: not started yet, or never started at all (and why not)."""
    if run.started_at is None and run.is_final:
        why = (run.error_message or "").strip().splitlines()
        return f"run {run.id} ({run.status}) never started, so it has no log" + (
            f": {why[0]}" if why else ""
        )
    if not run.is_final:
        return f"run {run.id} ({run.status}) has no log yet"
    return f"run {run.id} ({run.status}) has no log (it was removed, or never written)"
