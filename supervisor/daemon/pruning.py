"""`[retention] keep_days`: the daemon prunes old final runs once a day (off by default).

The prune runs on a thread of its own with a store of its own: its batches are short write
transactions (supervisor.db.prune) between which the loop's writes get in, and SQLite does
its work with the GIL released, so the loop is never held for the minutes a first prune of a
year of history may take. A prune that fails is logged and tried again the next day; the
daemon goes on either way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import structlog

from supervisor.db import Store
from supervisor.retention import cutoff_for, prune_runs
from supervisor.settings import Settings

log = structlog.get_logger(__name__)

# Once a day; the first one a while after the start, so that it never delays serving.
RETENTION_INTERVAL_SECONDS = 24 * 3600.0
RETENTION_FIRST_DELAY_SECONDS = 60.0
# How long stopping the daemon waits for a prune to finish its batch.
RETENTION_STOP_TIMEOUT_SECONDS = 5.0


class Pruner:
    """Starts a prune when one is due and none is running; owns that thread."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        utcnow: Callable[[], datetime],
        *,
        first_delay: float = RETENTION_FIRST_DELAY_SECONDS,
        interval: float = RETENTION_INTERVAL_SECONDS,
    ) -> None:
        """`monotonic` and `utcnow`: the daemon's clock."""
        self._monotonic = monotonic
        self._utcnow = utcnow
        self._interval = interval
        self._next = monotonic() + first_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next_due(self, settings: Settings) -> float | None:
        """Monotonic time of the next prune (None: retention is off)."""
        return None if settings.retention.keep_days is None else self._next

    def poll(self, settings: Settings) -> bool:
        """Start a prune if one is due; True if it started one."""
        keep_days = settings.retention.keep_days
        now = self._monotonic()
        if keep_days is None or now < self._next or self.running:
            return False
        self._next = now + self._interval
        cutoff = cutoff_for(keep_days, self._utcnow())
        self._thread = threading.Thread(
            target=self._prune,
            args=(settings, cutoff),
            name="runsup-retention",
            daemon=True,
        )
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        """True while a prune thread is at work."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = RETENTION_STOP_TIMEOUT_SECONDS) -> None:
        """Ask a running prune to stop after its batch, and wait for it a little."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _prune(self, settings: Settings, cutoff: datetime) -> None:
        log.info("retention_prune_started", ended_before=cutoff.isoformat())
        try:
            store = Store.open(settings.database_url, upgrade=False)
            try:
                done = prune_runs(
                    store,
                    settings,
                    cutoff,
                    files=settings.retention.files,
                    keep_going=lambda: not self._stop.is_set(),
                )
            finally:
                store.close()
        except Exception as exc:  # the daemon never dies of it: tried again the next day
            log.error("retention_prune_failed", error=str(exc))
            return
        log.info(
            "retention_pruned",
            runs=done.rows.runs,
            events=done.rows.events,
            dependencies=done.rows.dependencies,
            kept_needed=done.rows.kept_needed,
            run_dirs=done.dirs_removed,
            run_dir_errors=len(done.dir_errors),
            stopped=self._stop.is_set(),
        )
