"""The daemon's heartbeat: the modification time of a small file next to the database.

"When the daemon last served" (SPEC section 14, `runsup_daemon_heartbeat_timestamp_seconds`)
must be readable by any process that can read the database, yet an idle daemon commits
nothing (BENCHMARKS.md: zero commits with 100 quiet runs). A row written every interval would
break that and take the write lock other programs wait for; a file's mtime costs one utime()
call and no database write. The file sits in the database's own directory (`runs.db` ->
`runs.db.heartbeat`): whoever can open the database can look in that directory, and stat()
needs no read permission on the file itself, whatever mode the daemon's umask gives it.

The loop beats once a pass when HEARTBEAT_INTERVAL_SECONDS have gone by, and the interval is
one of the loop's deadlines, so an idle daemon still beats; a loop that hangs stops beating,
which is what the heartbeat is for (a thread beating on its own would hide that).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HEARTBEAT_SUFFIX = ".heartbeat"
# Beat at least this often: the README's alert fires when the heartbeat is a minute old.
HEARTBEAT_INTERVAL_SECONDS = 10.0
HEARTBEAT_FILE_MODE = 0o644


def heartbeat_path(database_path: Path | None, runs_dir: Path) -> Path:
    """Where the heartbeat of the daemon serving this database is kept."""
    if database_path is None:
        return runs_dir / f"daemon{HEARTBEAT_SUFFIX}"
    return database_path.with_name(database_path.name + HEARTBEAT_SUFFIX)


def last_beat(path: Path) -> float | None:
    """When the daemon last beat (seconds since the epoch), or None if it never did."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class Heartbeat:
    """Touches the heartbeat file every `interval` seconds of the loop's clock."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_INTERVAL_SECONDS) -> None:
        """Nothing is touched before the first beat()."""
        self.path = path
        self.interval = interval
        self.due = 0.0  # monotonic time of the next beat: the first pass beats
        self._failing = False

    def beat(self, now: float) -> bool:
        """Touch the file if a beat is due at monotonic `now`; True if one was due."""
        if now < self.due:
            return False
        self.due = now + self.interval
        try:
            self._touch()
        except OSError as exc:
            if not self._failing:  # one line per failure spell, not one per interval
                _log().warning("heartbeat_failed", path=str(self.path), error=exc.strerror)
            self._failing = True
        else:
            if self._failing:
                _log().info("heartbeat_restored", path=str(self.path))
            self._failing = False
        return True

    def others(self, paths: Iterable[Path]) -> set[Path]:
        """`paths` without the heartbeat file (its own touches are no news for the loop)."""
        return {p for p in paths if p != self.path}

    def _touch(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            # Made (again, if someone removed it): creating it sets its mtime to now.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, HEARTBEAT_FILE_MODE)
            os.close(fd)


def _log() -> Any:
    # structlog is imported when a beat fails or comes back, not by every command that only
    # looks at the heartbeat's age (its import is a tenth of a second of a short command).
    import structlog

    return structlog.get_logger(__name__)
