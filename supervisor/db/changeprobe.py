"""The change probe: tells the daemon cheaply whether the runs changed other than by its own
progress writes (not db/probe.py, which checks that a database is usable)."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine


class ProbedStore(Protocol):
    """What the probe reads of the store: its engine and its count of status writes."""

    @property
    def engine(self) -> Engine:
        """The store's engine (its pool holds the connection the probe reads on)."""
        ...

    @property
    def status_writes(self) -> int:
        """Commits of the store that changed more than the progress cache."""
        ...


class ChangeProbe:
    """Tells whether another program committed, or this store changed more than progress.

    Reads PRAGMA data_version, which moves on every commit made by *another* connection, on
    the store's own pooled connection (the loop uses one at a time, so the pool holds one):
    then the store's own commits do not show there, and `Store.status_writes` counts those
    that matter (status changes, claims), leaving out the progress cache. So the daemon's
    progress batches no longer look like news from other programs: at 10,000 progress lines a
    second they had caused about 20 extra database passes a second (bench/ load scenario).
    A value read on another connection than last time counts as a change (never a miss).
    """

    def __init__(self, store: ProbedStore) -> None:
        self._store = store
        self._sqlite = store.engine.dialect.name == "sqlite"
        self._key = f"runsup_data_version_{id(self)}"  # in the connection's own info dict
        self._last_writes: int | None = None

    def look(self) -> tuple[bool, bool]:
        """(another program committed, this store changed statuses) since the last call."""
        if not self._sqlite:
            return True, True
        conn = self._store.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute("PRAGMA data_version")
                row = cursor.fetchone()
                version = int(row[0]) if row else 0
            finally:
                cursor.close()
            last = conn.info.get(self._key)
            conn.info[self._key] = version
        finally:
            conn.close()  # back to the pool
        writes = self._store.status_writes
        ours = writes != self._last_writes
        self._last_writes = writes
        return version != last, ours

    def close(self) -> None:
        """Nothing is held between calls (kept for callers that close their probe)."""
