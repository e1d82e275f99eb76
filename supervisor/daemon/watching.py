"""The file watchers that wake the loop: the runs directory (progress and logs) and the
database's folder (other programs' commits touch its -wal file)."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.daemon.services import Services
from supervisor.heartbeat import Heartbeat
from supervisor.progress.dirwatch import DirectoryWatcher


class Watchers:
    """One or two directory watchers, by where the runs and the database live."""

    def __init__(self, services: Services, heartbeat: Heartbeat) -> None:
        self._s = services
        self._heartbeat = heartbeat
        self._runs_watcher: DirectoryWatcher | None = None
        self._db_watcher: DirectoryWatcher | None = None
        self._db_in_runs_watch = False  # one watcher sees both the runs and the database

    def start(self) -> None:
        """Start watching the runs directory and the database's folder."""
        runs_dir, db_path = self._s.settings.runs_dir, self._s.settings.database_path
        if db_path is not None and _shared_parent(runs_dir, db_path):
            # The default layout (runs.db beside runs/ and nothing else): one watch of their
            # folder sees both; each watcher thread wakes every step, so one costs half.
            self._runs_watcher = self._watcher(db_path.parent, recursive=True)
            self._db_in_runs_watch = True
            return
        self._runs_watcher = self._watcher(runs_dir, recursive=True)
        if db_path is not None:
            # Other programs' commits touch the -wal file: a hint to look at the database.
            self._db_watcher = self._watcher(db_path.parent, recursive=False)

    def db_changed(self, changed: set[Path]) -> bool:
        """Whether the watchers saw the database's files change (another program's commit)."""
        if self._db_watcher is not None:
            return bool(self._heartbeat.others(self._db_watcher.drain()))
        db_path = self._s.settings.database_path
        if not self._db_in_runs_watch or db_path is None:
            return False
        name, folder = db_path.name, db_path.parent
        ours = {p for p in changed if p.parent == folder and p.name.startswith(name)}
        return bool(self._heartbeat.others(ours))

    def _watcher(self, path: Path, *, recursive: bool) -> DirectoryWatcher:
        watcher = DirectoryWatcher(
            [path],
            self._s.wake,
            recursive=recursive,
            force_polling=self._s.settings.force_polling,
            poll_delay_ms=self._s.settings.poll_delay_ms,
        )
        watcher.start()
        return watcher

    def drain_runs(self) -> set[Path]:
        """The paths under the runs directory that changed since the last drain."""
        return self._runs_watcher.drain() if self._runs_watcher else set()

    def all(self) -> tuple[DirectoryWatcher | None, ...]:
        """Both watchers (None where there is none)."""
        return (self._runs_watcher, self._db_watcher)

    def stop(self) -> None:
        """Stop both watchers."""
        for watcher in self.all():
            if watcher is not None:
                watcher.stop()


def _shared_parent(runs_dir: Path, db_path: Path) -> bool:
    """True if the runs directory and the database sit side by side in a folder that holds no
    other directory (a recursive watch of that folder then watches nothing else)."""
    folder = db_path.parent
    if runs_dir.parent != folder:
        return False
    try:
        return all(
            entry.name == runs_dir.name or not entry.is_dir(follow_symlinks=False)
            for entry in os.scandir(folder)
        )
    except OSError:
        return False
