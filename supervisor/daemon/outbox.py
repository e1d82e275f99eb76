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
from dataclasses import dataclass, field

import structlog

from supervisor.db import ProgressUpdate, RowChange, Store
from supervisor.errors import DatabaseBusy

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


@dataclass
class _Isolated:
    """What committing a failed batch write by write gave."""

    entries: list[_Entry] = field(default_factory=list)  # committed or refused, in order
    results: list[bool] = field(default_factory=list)  # for each of entries: applied
    waiting: list[_Entry] = field(default_factory=list)  # not tried: the database got locked
    progress: dict[str, ProgressUpdate] = field(default_factory=dict)  # to try again
    committed: int = 0  # progress updates that went in


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
        kept: _Isolated | None = None
        try:
            results = self._store.commit_batch([e.change for e in entries], progress)
        except DatabaseBusy as exc:
            self._blocked(now, str(exc))
            return False
        except Exception as exc:  # a bad change, a full disk or a broken file
            kept = self._one_by_one(entries, progress)
            if kept is None:  # nothing commits alone either: the database, not one change
                self._blocked(now, f"{type(exc).__name__}: {exc}")
                return False
            entries, results = kept.entries, kept.results
        self._changes = kept.waiting if kept is not None else []
        self._progress = kept.progress if kept is not None else {}
        if self.blocked_since is not None:
            log.info("database_writes_resumed", waited_seconds=round(now - self.blocked_since, 3))
        self.blocked_since = None
        self.failed_attempts = 0
        self.last_error = None
        self._follow_up(entries, results)
        return not self._changes and not self._progress

    def _one_by_one(
        self, entries: list[_Entry], progress: list[ProgressUpdate]
    ) -> _Isolated | None:
        """After a batch failed with an error other than a lock: commit each write alone, so
        that one poison change (a row SQLite refuses) cannot hold back every other write
        forever. A change that fails alone while another write commits is dropped, loudly,
        and its follow-up learns it did not apply. None if no write commits alone (a full
        disk, a read-only file): then everything is kept for the next attempt."""
        out = _Isolated()
        refused: list[tuple[_Entry, str]] = []
        for i, entry in enumerate(entries):
            try:
                out.results.append(self._store.commit_batch([entry.change])[0])
            except DatabaseBusy:  # locked meanwhile: the rest waits as usual
                out.waiting = entries[i:]
                break
            except Exception as exc:
                refused.append((entry, f"{type(exc).__name__}: {exc}"))
                continue
            out.entries.append(entry)
        bad_progress: list[tuple[ProgressUpdate, str]] = []
        for update in progress:
            try:
                self._store.commit_batch([], [update])
            except DatabaseBusy:
                out.progress[update.run_id] = update
            except Exception as exc:
                bad_progress.append((update, f"{type(exc).__name__}: {exc}"))
            else:
                out.committed += 1
        if not out.entries and not out.committed:
            return None  # nothing went in alone: keep everything as it was
        for entry, error in refused:
            log.error(
                "database_write_refused",
                run_id=entry.change.run_id,
                to=entry.change.to.value if entry.change.to else None,
                reason=entry.change.reason,
                error=error,
            )
            out.entries.append(entry)
            out.results.append(False)
        for update, error in bad_progress:
            log.error("database_write_refused", run_id=update.run_id, write="progress", error=error)
        return out

    def _follow_up(self, entries: list[_Entry], results: list[bool]) -> None:
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
