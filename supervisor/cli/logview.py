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
import os
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO, TextIO

from supervisor.db import Store
from supervisor.rundir import log_path

# `--follow`: how often the log and the run's status are looked at again.
LOG_FOLLOW_INTERVAL_SECONDS = 0.25
COPY_CHUNK_BYTES = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Closed(Exception):
    """The reader of our stdout went away."""


def _copy_new(path: Path, offset: int, out: BinaryIO, err: TextIO) -> int:
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
) -> int:
    """Print the run's log; with `follow`, until the run is final. Returns the exit code."""
    stdout = out if out is not None else sys.stdout.buffer
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
    except _Closed:
        # Keep the interpreter from complaining when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    if path is None or (not path.exists() and not follow):
        stderr.write(f"run {run_id} ({run.status}) has no log yet\n")
    return 0
