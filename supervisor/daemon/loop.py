"""The supervision loop: composes the store, the executors, progress tails and watchers.

One thread runs the loop; signal handlers and watcher threads only record and wake it.
Everything the loop waits for is a file descriptor (a wake pipe, a launch's report pipe, a run's
end, a leftover process) or a deadline, so it is idle when nothing happens and reacts within
milliseconds when something does. Nothing in a pass waits for long: a launch is begun and
finished when its executor reports back, and status writes are gathered in an Outbox that
commits a pass's starts, ends and progress in one transaction and, while another program holds
the database locked, keeps them and tries again while the loop goes on serving.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from types import FrameType
from typing import Any

import structlog

from supervisor import rundir
from supervisor.daemon.clock import Clock, SystemClock
from supervisor.daemon.foreign import ForeignRuns
from supervisor.daemon.launcher import Launcher
from supervisor.daemon.lockfile import acquire_lock
from supervisor.daemon.outbox import RETRY_INTERVAL_SECONDS, Outbox
from supervisor.daemon.progressfeed import ProgressFeed
from supervisor.daemon.pruning import Pruner
from supervisor.daemon.queuekeeper import QueueKeeper, QueueView
from supervisor.daemon.readopt import Readoption
from supervisor.daemon.rebuild import Retired, close_finished, rebuild_executors
from supervisor.daemon.runstate import Phase
from supervisor.daemon.services import Services
from supervisor.daemon.status import StatusReport
from supervisor.daemon.supervision import Supervision
from supervisor.daemon.tracked import InFlight, TrackedRun
from supervisor.daemon.wakeups import _EXIT, _LAUNCH, _LEFTOVER, _WAKE
from supervisor.daemon.watching import Watchers
from supervisor.db import Store, cancel_requested_change
from supervisor.errors import ConfigError, DatabaseBusy
from supervisor.executors.base import Executor
from supervisor.executors.local.executor import LocalExecutor
from supervisor.executors.registry import build_executors
from supervisor.heartbeat import Heartbeat, heartbeat_path
from supervisor.metrics.server import MetricsServer
from supervisor.notify import Notifier
from supervisor.settings import LOCAL_EXECUTOR, Settings, load_settings

log = structlog.get_logger(__name__)

# After an error in one pass of the loop, wait this long before the next (no hot spin).
ERROR_BACKOFF_SECONDS = 1.0
# Phases of a run whose whole group is gone (only its final write may be left to do).
_ENDED = (Phase.EXITED, Phase.SETTLED)
# On the way out, keep trying to commit what is left for at most this long.
SHUTDOWN_FLUSH_SECONDS = 5.0


class Daemon:
    """The supervisor: takes PENDING runs, watches them, settles them, survives restarts.

    It composes the owners below it (each built with what it needs, calls pointing down):
    supervision (tracked runs), the progress feed, the launcher (launches in flight), foreign
    runs, readoption (recovery and waiting claims), the queue and the status report."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        executor: Executor | None = None,
        executors: Mapping[str, Executor] | None = None,
        notifier: Notifier | None = None,
        config_file: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.notifier = notifier or Notifier.from_environ()
        self.config_file = config_file
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, ""))
        built: dict[str, Executor] = (
            dict(executors) if executors is not None else build_executors(settings, self.wake)
        )
        if executor is not None or LOCAL_EXECUTOR not in built:
            built[LOCAL_EXECUTOR] = executor or LocalExecutor()
        self.store, self.clock, self.outbox = store, clock or SystemClock(), Outbox(store)
        self.services = Services(
            settings=settings,
            store=store,
            clock=self.clock,
            outbox=self.outbox,
            selector=self.selector,
            executors=built,
            wake=self.wake,
            poll_db_soon=self._poll_db_soon,
        )
        self._signals: list[int] = []
        self._retired: list[Retired] = []  # executors a reload replaced, serving their runs
        self.stopping = False
        self._forced = False
        self._next_rescan = 0.0
        self._next_db_poll = 0.0
        self._db_unsynced = False  # a database pass failed half-way: look again
        self._probe = store.change_probe()
        self._lock_fd: int | None = None
        # SPEC section 14: when the daemon last served, and its /metrics endpoint if asked for.
        self._heartbeat = Heartbeat(heartbeat_path(settings.database_path, settings.runs_dir))
        self._metrics = MetricsServer.for_settings(settings)
        self.watchers = Watchers(self.services, self._heartbeat)
        # The owners, lowest first; the lambdas read tables owned further up, at call time.
        runs: dict[str, TrackedRun] = {}  # supervision's table; the feed and the queue read it
        self.feed = ProgressFeed(self.services, runs)
        self.queue = QueueKeeper(  # SPEC sections 11 and 13
            QueueView(
                self.services,
                busy_templates=lambda: self.launcher.busy_templates(),
                # Tracked, settling (its true outcome on its way) or launching (issue 20, 9).
                supervises=lambda run_id: (
                    self.supervision.knows(run_id) or run_id in self.launching
                ),
                launching=lambda run_id: run_id in self.launching,
            )
        )
        self.supervision = Supervision(self.services, self.feed, self.queue.retry_change, runs)
        self.runs: Mapping[str, TrackedRun] = runs  # read only, as the tables below
        self.launcher = Launcher(
            self.services,
            self.supervision,
            self.queue.pickup,
            lambda: self.readoption.claims_held,
            lambda name: self.readoption.claims_on(name),
        )
        self.launching: Mapping[str, InFlight] = self.launcher.launching
        self.foreign = ForeignRuns(self.services, self.supervision)
        self.readoption = Readoption(
            self.services, self.supervision, self.launcher, self.foreign, self.feed
        )
        self.status = StatusReport(
            self.services,
            self.notifier,
            self._heartbeat,
            self._metrics,
            running=lambda: len(self.runs),
            queue_parts=self.queue.status_parts,
            watchers=self.watchers.all,
        )
        # [retention] keep_days: old final runs pruned once a day, on a thread of its own.
        self.pruner = Pruner(self.clock.monotonic, self.clock.utcnow)

    @property
    def settings(self) -> Settings:
        """The settings in force (replaced on SIGHUP)."""
        return self.services.settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.services.settings = value

    def recover(self) -> None:
        """Find every run an earlier daemon was responsible for and take it on again."""
        self.readoption.recover()

    # -- life cycle ---------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look around now (called from other threads and signal handlers)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _poll_db_soon(self) -> None:
        self._next_db_poll = 0.0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it; the loop acts (uvicorn's rule). A second SIGINT forces exit.
        if signum == signal.SIGINT and self.stopping:
            self._forced = True
        self._signals.append(signum)
        self.wake()

    def run(self) -> int:
        """Serve until asked to stop; returns the exit code."""
        self._lock_fd = acquire_lock(self.settings.runs_dir)
        if self._metrics is not None:
            self._metrics.start()  # a port in use: refuse to start, one clear line
        self.settings.runs_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.watchers.start()
        self.recover()
        self._guarded(lambda: self._sync_db_or_wait(force=True))
        self._guarded(self._flush)
        self._guarded(lambda: self.status.count_pending(self.clock.monotonic()))
        self._heartbeat.beat(self.clock.monotonic())  # the file exists once the daemon is ready
        self.notifier.ready(self.status.text())
        log.info(
            "daemon_ready",
            runs_dir=str(self.settings.runs_dir),
            database=self.settings.database,
            max_concurrent_runs=self.settings.max_concurrent_runs,
            adopted=len(self.runs),
        )
        try:
            while not self._done():
                self._guarded(self.step)
        finally:
            self._shutdown()
        return 0

    def _done(self) -> bool:
        if not self.stopping:
            return False
        if self._forced or self.settings.on_stop == "detach":
            return True
        # Every run has ended: what is left to write, _shutdown flushes within its own bound
        # (a database locked by another program does not keep the daemon up until it is
        # killed; the next daemon settles any run whose outcome did not get written).
        return not self.launching and all(r.state.phase in _ENDED for r in self.runs.values())

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except Exception as exc:  # the daemon never dies of one bad pass
            log.error("loop_error", error=str(exc), error_type=type(exc).__name__, exc_info=True)
            self._db_unsynced = True
            time.sleep(ERROR_BACKOFF_SECONDS)

    def _shutdown(self) -> None:
        # The last STATUS= stays on the unit after it stops: say what was left running.
        self.notifier.stopping(f"stopped, {len(self.runs)} left running")
        self.watchers.stop()
        self.pruner.stop()  # after its batch: what it committed stays done
        # Its keeper (or job) goes on; the next daemon finds the claimed run again.
        self.launcher.abandon_all()
        for executor in [*self.services.executors.values(), *(r.executor for r in self._retired)]:
            executor.close()
        self.feed.queue_progress()
        deadline = self.clock.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while not self.outbox.flush(self.clock.monotonic()) and self.clock.monotonic() < deadline:
            time.sleep(max(0.0, self.outbox.retry_at - self.clock.monotonic()))
        if len(self.outbox):
            log.error("writes_lost_at_exit", writes=len(self.outbox), error=self.outbox.last_error)
        for run in list(self.runs.values()):
            # Detach: the keeper goes on and the next daemon re-adopts the run.
            self.supervision.forget(run)
        self._probe.close()
        if self._metrics is not None:
            self._metrics.stop()
        log.info("daemon_stopped", detached=self.settings.on_stop == "detach")

    # -- one pass -----------------------------------------------------------

    def step(self) -> None:
        """One pass: wait for something to happen (or a deadline), then act on all of it."""
        timeout = self._next_timeout()
        for key, _ in self.selector.select(timeout):
            kind, run_id = key.data
            if kind == _WAKE:
                self._drain_wake()
            elif kind == _LAUNCH:
                self.launcher.poll_launch(run_id)
            elif kind == _EXIT:
                self.supervision.on_exit(run_id)
            elif kind == _LEFTOVER:
                self.supervision.check_group(run_id)
        self._handle_signals()
        now = self.clock.monotonic()
        self.launcher.poll_executors(r.executor for r in self._retired)
        if self._retired:
            self._retired = close_finished(self._retired, [*self.runs, *self.launching])
        self.launcher.poll_due_launches(now)
        changed = self.watchers.drain_runs()
        again = self.feed.take_read_again()
        logs = {p for p in changed if p.name == rundir.LOG_FILENAME}
        # A changed log matters only to a run that reads progress from its output; each file
        # read is five system calls, 10,000 a second under the bench's output load.
        self.feed.read_progress(self.feed.runs_touched(changed - logs) | again)
        touched_logs = self.feed.runs_touched(logs)
        self.feed.read_output(touched_logs)
        # Only runs whose log changed: a progress line cannot grow the log (and a cap check
        # per progress batch cost ~8 % of the loop at 10,000 lines/s; bench/ load scenario).
        self.feed.bound_logs(touched_logs, skip_small=True)
        db_hint = self.watchers.db_changed(changed)
        if now >= self._next_rescan:
            self.supervision.rescan()
            self._next_rescan = now + self.settings.rescan_interval_seconds
        queue_due = self.queue.due(now)  # a run's not_before passed: look even if nothing changed
        if db_hint or now >= self._next_db_poll or queue_due:
            self._next_db_poll = now + self.settings.db_poll_interval_seconds
            self._sync_db_or_wait(force=queue_due)
        self.queue.poll_hooks()
        self.supervision.check_deadlines(now)
        self.readoption.check_claims(now)
        self._flush()
        self.status.count_pending(now)
        self.status.report()
        self.pruner.poll(self.settings)

    def _next_timeout(self) -> float:
        now = self.clock.monotonic()
        if self.feed.has_more:
            return 0.0
        deadlines = [self._next_rescan, self._next_db_poll, self._heartbeat.due]
        deadlines += [d for d in self._loop_deadlines(now) if d is not None]
        for flight in self.launching.values():
            deadlines.append(flight.launch.deadline)
        for run in self.runs.values():
            deadlines += [d for d in (run.state.next_deadline(), run.group_check_at) if d]
        return max(0.0, min(deadlines) - now)

    def _loop_deadlines(self, now: float) -> Iterator[float | None]:
        """The loop's own timers that are set only sometimes."""
        watchdog, count = self.status.deadlines()
        yield watchdog
        yield self.outbox.retry_at if self.outbox.blocked_since is not None else None
        yield count
        yield self.readoption.next_deadline()
        yield self.queue.next_due()
        yield self.pruner.next_due(self.settings)
        for executor in [*self.services.executors.values(), *(r.executor for r in self._retired)]:
            if executor.poll_interval is not None:
                yield now + executor.poll_interval  # its thread also wakes us sooner

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            elif not self.stopping:
                self._begin_stop(signum)

    def _begin_stop(self, signum: int) -> None:
        self.stopping = True
        self.notifier.stopping()
        log.info(
            "daemon_stopping", signal=signal.Signals(signum).name, on_stop=self.settings.on_stop
        )
        if self.settings.on_stop == "cancel":
            self._cancel_all()

    def _cancel_all(self) -> None:
        """on_stop = "cancel": stop every run and launch now; the requests are recorded with
        the pass's other writes (a locked database or a deleted row stops nothing here)."""
        for run in list(self.runs.values()):
            if not run.state.cancel_requested:
                self.outbox.add(cancel_requested_change(run.run_id))
            self.supervision.request_cancel(run)
        for run_id in list(self.launching):
            self.outbox.add(cancel_requested_change(run_id))
            try:
                self.launcher.cancel(run_id, "cancelled: the daemon stopped")
            except Exception as exc:  # one launch that cannot be cancelled stops no other
                log.error("launch_cancel_failed", run_id=run_id, error=str(exc), exc_info=True)

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_settings(self.config_file)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc))
        else:
            # Where the runs and the database live cannot change under live runs.
            kept = replace(new, database=self.settings.database, runs_dir=self.settings.runs_dir)
            old, self.settings = self.settings, kept
            self._retired += rebuild_executors(
                self.services.executors, old, kept, self._in_flight_on, self.wake
            )
            self.launcher.reload()
            log.info(
                "config_reloaded",
                templates=sorted(kept.templates),
                max_concurrent_runs=kept.max_concurrent_runs,
            )
        self.notifier.ready(self.status.text())

    def _in_flight_on(self, executor: str) -> set[str]:
        """Ids of the runs and launches of this executor."""
        ids = {i for i, r in self.runs.items() if r.executor == executor}
        return ids | {i for i, f in self.launching.items() if f.executor == executor}

    def _flush(self) -> None:
        self.feed.queue_progress()
        self.outbox.flush(self.clock.monotonic())

    # -- the database: new runs and cancel requests --------------------------

    def _sync_db_or_wait(self, *, force: bool) -> None:
        """Look at the database; if it is locked, look again soon (never a failed pass)."""
        try:
            self._sync_db(force=force)
        except DatabaseBusy as exc:
            self._next_db_poll = self.clock.monotonic() + RETRY_INTERVAL_SECONDS
            log.debug("database_busy", error=str(exc))

    def _sync_db(self, *, force: bool) -> None:
        # The probe forgets a change once asked: a pass that failed half-way (database busy
        # or full, a bad row) must look again next time even if nobody commits meanwhile.
        others, ours = self._probe.look()
        full = others or force or self._db_unsynced
        if not full and not ours:
            return
        self._db_unsynced = True
        if full:  # cancel requests, foreign rows and pauses come from other programs only
            for record in self.store.cancel_requests():
                self.launcher.cancel_requested(record)
            self.foreign.watch()
        self.queue.sync(others=full)
        if not self.stopping:
            self.launcher.launch_pending()
        self.status.count_stale()  # for STATUS= only: counted at most once a second
        self._db_unsynced = False
