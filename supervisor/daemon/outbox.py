"""The loop's writes, gathered over a pass and committed together without ever blocking it.

Starts, ends, timeout marks and progress of one pass share one transaction (each used to cost
its own commit). When another program holds the write lock past the store's short busy
timeout, nothing is lost and nothing waits: the writes stay here, the loop goes on serving
(signals, escalation, progress, the watchdog) and the outbox tries again after
`RETRY_INTERVAL_SECONDS`. Each change carries a callback that learns whether its
compare-and-set applied once it is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from supervisor.db import ProgressUpdate, RowChange, Store
from supervisor.errors import DatabaseError

log = structlog.get_logger(__name__)

# After a failed commit, try again this much later, doubling up to the maximum (the loop goes
# on meanwhile; a long lock costs a few attempts, not a hot loop).
RETRY_INTERVAL_SECONDS = 0.25
RETRY_INTERVAL_MAX_SECONDS = 2.0

Done = Callable[[bool], None]


@dataclass
class _Entry:
    change: RowChange
    done: Done | None


class Outbox:
    """Pending writes of the loop; flush() commits them all in one transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changes: list[_Entry] = []
        self._progress: dict[str, ProgressUpdate] = {}
        self.blocked_since: float | None = None  # monotonic: first failed flush in a row
        self.retry_at = 0.0
        self.failed_attempts = 0
        self.last_error: str | None = None

    def add(self, change: RowChange, done: Done | None = None) -> None:
        """Queue a change; `done(applied)` runs after it is committed."""
        self._changes.append(_Entry(change, done))

    def progress(self, update: ProgressUpdate) -> None:
        """Queue a run's latest progress (a newer one replaces an older one not yet written)."""
        self._progress[update.run_id] = update

    def __len__(self) -> int:
        return len(self._changes) + len(self._progress)

    def holds(self, run_id: str) -> bool:
        """True while a change of this run waits to be committed."""
        return any(entry.change.run_id == run_id for entry in self._changes)

    def flush(self, now: float) -> bool:
        """Commit everything queued in one transaction; False if it must wait (then kept)."""
        if not self._changes and not self._progress:
            return True
        if self.blocked_since is not None and now < self.retry_at:
            return False
        entries, progress = self._changes, list(self._progress.values())
        try:
            results = self._store.commit_batch([e.change for e in entries], progress)
        except DatabaseError as exc:
            self._blocked(now, str(exc))
            return False
        except Exception as exc:  # a full disk or a broken file: keep it all, try again later
            self._blocked(now, f"{type(exc).__name__}: {exc}")
            return False
        self._changes = []
        self._progress = {}
        if self.blocked_since is not None:
            log.info("database_writes_resumed", waited_seconds=round(now - self.blocked_since, 3))
        self.blocked_since = None
        self.failed_attempts = 0
        self.last_error = None
        for entry, applied in zip(entries, results, strict=True):
            if entry.done is None:
                continue
            try:
                entry.done(applied)
            except Exception as exc:  # one run's follow-up must not cost the others theirs
                log.error(
                    "write_followup_failed",
                    run_id=entry.change.run_id,
                    error=str(exc),
                    exc_info=True,
                )
        return True

    def _blocked(self, now: float, error: str) -> None:
        self.failed_attempts += 1
        if self.blocked_since is None:
            self.blocked_since = now
            log.warning("database_writes_waiting", error=error, writes=len(self))
        else:
            log.info(
                "database_writes_retry_failed",
                error=error,
                writes=len(self),
                attempt=self.failed_attempts,
                waited_seconds=round(now - self.blocked_since, 3),
            )
        self.last_error = error
        delay = RETRY_INTERVAL_SECONDS * 2 ** (self.failed_attempts - 1)
        self.retry_at = now + min(delay, RETRY_INTERVAL_MAX_SECONDS)

    def status(self, now: float) -> str | None:
        """For systemd's STATUS=: how long writes have waited, or None."""
        if self.blocked_since is None:
            return None
        return f"database locked for {now - self.blocked_since:.0f} s, {len(self)} writes waiting"
