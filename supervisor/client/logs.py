"""A run's log (`logs/sim.log`) as lines, for `Run.logs()`: read in chunks, never through a
link or from a FIFO (a run directory is the simulation's to write), and when following, woken
by the database's change counter or, for new output, a short poll of the file."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.rundir import log_path

if TYPE_CHECKING:
    from supervisor.client.session import Session

# Following: how often the file is looked at for new output.
LOG_POLL_SECONDS = 0.1
READ_CHUNK_BYTES = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """What the file holds past `offset`, and the new offset (the file's end when it was cut
    shorter in the middle, as the daemon does past max_log_bytes)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return b"", offset
        raise
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            return b"", offset
        if info.st_size < offset:
            offset = info.st_size  # cut in the middle: go on from its new end
        fh.seek(offset)
        data = fh.read(READ_CHUNK_BYTES)
    return data, offset + len(data)


def log_lines(client: Session, run_id: str, *, follow: bool) -> Iterator[str]:
    """The log's lines without their newlines; with `follow`, until the run has ended and all
    it wrote was read (a last line without a newline comes out then)."""
    store = client.store
    version = store.data_version()
    record = store.get(run_id)
    offset = 0
    pending = b""
    while True:
        path = log_path(Path(record.run_dir)) if record.run_dir else None
        ended = record.is_final  # read before the file, so output up to the end is copied
        data = b""
        if path is not None:
            data, offset = _read_from(path, offset)
        if data:
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", errors="replace")
            continue  # more may be there already
        if not follow or ended:
            if pending:
                yield pending.decode("utf-8", errors="replace")
            return
        time.sleep(LOG_POLL_SECONDS)
        current = store.data_version()
        if current != version:
            version = current
            record = store.get(run_id)
