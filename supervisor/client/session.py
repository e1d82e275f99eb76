"""What the client's handles share: the database, where results are, waiting for changes."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self, TypeVar

from supervisor.client.errors import ResultsWarning, WaitTimeout
from supervisor.db import RunRecord, is_valid_run_id
from supervisor.db.clientstore import ClientStore
from supervisor.results import ResultsTable, build_table
from supervisor.settings import DEFAULT_RESULTS_FILE, Settings, load_settings

# wait() and watch() look at SQLite's change counter (PRAGMA data_version, microseconds) this
# often and read the runs again only when it moved: a commit is seen within this much.
WAIT_POLL_SECONDS = 0.02
# ... and read them again at least this often anyway (a safety net; nothing should need it).
WAIT_REREAD_SECONDS = 5.0

T = TypeVar("T")


class Session:
    """An open database and the configuration it was found by; the base of Client."""

    def __init__(
        self, config: str | os.PathLike[str] | None = None, *, settings: Settings | None = None
    ) -> None:
        self.settings = settings if settings is not None else load_settings(config)
        self._store = ClientStore.open(self.settings.database_url, self.settings.database_path)

    def close(self) -> None:
        """Release the database connections (handles made by this client stop working)."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what the handles share ---------------------------------------------------------

    @property
    def store(self) -> ClientStore:
        """The database, as another program may use it (SPEC section 3)."""
        return self._store

    def results_path(self, record: RunRecord) -> Path | None:
        """Where a run's results file is (its template's `results_file`); None if the run has
        no directory yet."""
        template = self.settings.templates.get(record.template)
        name = template.results_file if template is not None else DEFAULT_RESULTS_FILE
        if record.run_dir:
            return Path(record.run_dir) / name
        if record.started_at is not None and is_valid_run_id(record.id):
            # Started by another program that did not record its directory: the default one.
            return self.settings.runs_dir / record.id / name
        return None

    def table(self, records: Sequence[RunRecord], *, warn: bool = True) -> ResultsTable:
        """The results table of these runs (as `runsup results`); with `warn`, one
        ResultsWarning for each run whose results file could not be used."""
        table = build_table(records, self.results_path)
        if warn:
            for note in table.notes:
                warnings.warn(note, ResultsWarning, stacklevel=3)
        return table

    def wait_for(
        self,
        read: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float | None,
        what: str,
    ) -> T:
        """Read until `done(read())`: again each time the database's change counter moves
        (looked at every WAIT_POLL_SECONDS). WaitTimeout after `timeout` seconds."""
        for value, finished in self.follow(read, done, timeout, what):
            if finished:
                return value
        raise AssertionError("unreachable")  # follow() ends only after a finished value

    def follow(
        self,
        read: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float | None,
        what: str,
    ) -> Iterator[tuple[T, bool]]:
        """Each new reading (the first at once, then one after each commit anyone makes) with
        whether it is done; ends after the first that is. WaitTimeout after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # The counter is read before the rows: a commit landing between is seen next time.
        version = self._store.data_version()
        value = read()
        last_read = time.monotonic()
        while True:
            finished = done(value)
            yield value, finished
            if finished:
                return
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise WaitTimeout(f"{what}: not done after {timeout:g} s (the runs go on)")
                time.sleep(WAIT_POLL_SECONDS)
                current = self._store.data_version()
                if current != version or time.monotonic() - last_read >= WAIT_REREAD_SECONDS:
                    break
            version = current
            value = read()
            last_read = time.monotonic()
