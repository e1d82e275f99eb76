"""What the daemon tells systemd and the world: the STATUS= text (with its pending count), the
watchdog, the heartbeat file and the /metrics endpoint's check."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from supervisor.daemon.services import Services
from supervisor.heartbeat import Heartbeat
from supervisor.metrics.server import MetricsServer
from supervisor.notify import Notifier
from supervisor.progress.dirwatch import DirectoryWatcher
from supervisor.states import RunStatus

# The pending count in systemd's STATUS= is taken at most this often (it costs a count).
STATUS_COUNT_INTERVAL_SECONDS = 1.0


class StatusReport:
    """Builds the STATUS= text and sends it when it changed; owns the pending count."""

    def __init__(
        self,
        services: Services,
        notifier: Notifier,
        heartbeat: Heartbeat,
        metrics: MetricsServer | None,
        *,
        running: Callable[[], int],
        queue_parts: Callable[[], list[str]],
        watchers: Callable[[], Iterable[DirectoryWatcher | None]],
    ) -> None:
        self._s = services
        self._notifier = notifier
        self._heartbeat = heartbeat
        self._metrics = metrics
        self._running = running
        self._queue_parts = queue_parts
        self._watchers = watchers
        self._pending_count = 0
        self._next_count = 0.0
        self._count_stale = True
        self._next_watchdog = 0.0
        self._last_status = ""

    def text(self) -> str:
        """The STATUS= line: runs, pauses, writes waiting, watching down."""
        parts = [f"{self._running()} running, {self._pending_count} pending"]
        parts.extend(self._queue_parts())
        waiting = self._s.outbox.status(self._s.clock.monotonic())
        if waiting:
            parts.append(waiting)
        for watcher in self._watchers():
            if watcher is not None and watcher.failed is not None:
                # Progress then arrives only with each rescan: the operator should know why.
                parts.append(f"file watching down, rescanning ({watcher.failed})")
        return "; ".join(parts)

    def report(self) -> None:
        """Send STATUS= if it changed, the watchdog when due, and beat the heartbeat."""
        text = self.text()
        if text != self._last_status:
            self._notifier.status(text)
            self._last_status = text
        interval = self._notifier.watchdog_interval
        if interval and time.monotonic() >= self._next_watchdog:
            self._notifier.watchdog()
            self._next_watchdog = time.monotonic() + interval
        if self._heartbeat.beat(self._s.clock.monotonic()) and self._metrics is not None:
            self._metrics.check(self._s.clock.monotonic())

    def count_stale(self) -> None:
        """The database changed: count the pending runs again (at most once an interval)."""
        self._count_stale = True

    def count_pending(self, now: float) -> None:
        """Count the PENDING runs if the count is stale and its interval passed."""
        if self._count_stale and now >= self._next_count:
            self._pending_count = self._s.store.count_status(RunStatus.PENDING)
            self._next_count = now + STATUS_COUNT_INTERVAL_SECONDS
            self._count_stale = False

    def deadlines(self) -> list[float | None]:
        """The times this report wants the loop to wake: the watchdog and the next count."""
        return [
            self._next_watchdog if self._notifier.watchdog_interval else None,
            self._next_count if self._count_stale else None,
        ]
