"""One daemon a runs directory: a lock file held for the daemon's life, naming its pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from supervisor.errors import SupervisorError

DAEMON_LOCK_FILENAME = ".daemon.lock"


def acquire_lock(runs_dir: Path) -> int:
    """Hold the runs directory's lock file (one daemon a runs directory); its descriptor."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / DAEMON_LOCK_FILENAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        other = path.read_text().strip() or "?"
        raise SupervisorError(
            f"another runsup daemon (pid {other}) already serves {runs_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
