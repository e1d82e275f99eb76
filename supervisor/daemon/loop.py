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
import fcntl
import os
import selectors
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from supervisor import logcap, rundir
from supervisor import outcome as outcomes
from supervisor.daemon import launchprep, recovery
from supervisor.daemon.clock import Clock, SystemClock
from supervisor.daemon.outbox import RETRY_INTERVAL_SECONDS, Outbox
from supervisor.daemon.queueing import QueueKeeper
from supervisor.daemon.resources import Held, Plan, Resources, Start, running_per_template
from supervisor.daemon.runstate import (
    CHECKPOINT_WHY,
    MarkTimedOut,
    Phase,
    RunState,
    SendSignal,
    StopCause,
)
from supervisor.daemon.tracked import (
    GROUP_CHECK_FIRST_SECONDS,
    GROUP_CHECK_MAX_SECONDS,
    InFlight,
    TrackedRun,
    log_tail,
    progress_of,
    read_on,
    running,
    stop_cause,
    tails_for,
)
from supervisor.db import (
    RunRecord,
    Store,
    claim_released_change,
    corrected_final_change,
    external_id_change,
    final_change,
    foreign_identity_change,
    standin_change,
    timed_out_change,
)
from supervisor.errors import (
    ConfigError,
    DatabaseBusy,
    LaunchCancelled,
    LaunchError,
    SupervisorError,
)
from supervisor.executors.base import (
    Executor,
    ExitStatus,
    Launch,
    ProcessRecord,
    RunHandle,
    RunRef,
)
from supervisor.executors.local.executor import LocalExecutor
from supervisor.executors.local.identity import current_boot_id, process_age_seconds
from supervisor.executors.registry import build_executors
from supervisor.heartbeat import Heartbeat, heartbeat_path
from supervisor.metrics_server import MetricsServer
from supervisor.notify import Notifier
from supervisor.outcome import Outcome
from supervisor.outputpatterns import MAX_READ_BYTES
from supervisor.queue import attempt_number
from supervisor.settings import LOCAL_EXECUTOR, Settings, Template, load_settings
from supervisor.states import RunStatus
from supervisor.watch import DirectoryWatcher

log = structlog.get_logger(__name__)

# After an error in one pass of the loop, wait this long before the next (no hot spin).
ERROR_BACKOFF_SECONDS = 1.0
# The loop's own writes wait at most this long for another program's write lock, then give up
# and try again later: a locked database must never stall the loop (systemd's watchdog, signal
# escalation and progress go on meanwhile).
LOOP_BUSY_TIMEOUT_MS = 100
# The pending count in systemd's STATUS= is taken at most this often (it costs a count).
STATUS_COUNT_INTERVAL_SECONDS = 1.0
# How far past its free slots a scheduling pass looks down the queue for runs that fit.
SCHEDULING_LOOKAHEAD = 32
# A claim whose keeper was still starting at the last look is looked at again this often.
CLAIM_RECHECK_SECONDS = 0.5
# On the way out, keep trying to commit what is left for at most this long.
SHUTDOWN_FLUSH_SECONDS = 5.0
DAEMON_LOCK_FILENAME = ".daemon.lock"
# Bits always added to the daemon's umask (hence its runs'): as systemd's UMask=0027.
UMASK_FLOOR = 0o027
# Crash points for fault-injection tests; inert unless this variable names one.
CRASH_POINT_VARIABLE = "RUNSUP_TEST_CRASH_POINT"

# Selector tags: what a ready file descriptor means.
_WAKE = "wake"
_EXIT = "exit"
_LAUNCH = "launch"
_LEFTOVER = "leftover"


def crash_point(name: str) -> None:
    """Die at once, as a SIGKILL would, if a test armed this point (does nothing otherwise)."""
    if os.environ.get(CRASH_POINT_VARIABLE) == name:
        log.warning("crash_point_reached", point=name)
        os.kill(os.getpid(), signal.SIGKILL)


class Daemon:
    """The supervisor: takes PENDING runs, watches them, settles them, survives restarts."""

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
        self.settings = settings
        self.store = store
        self.notifier = notifier or Notifier.from_environ()
        self.config_file = config_file
        self.clock: Clock = clock or SystemClock()
        self.outbox = Outbox(store)
        self.resources = Resources(settings)
        self.runs: dict[str, TrackedRun] = {}
        self.launching: dict[str, InFlight] = {}
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, ""))
        self.executors: dict[str, Executor] = (
            dict(executors) if executors is not None else build_executors(settings, self.wake)
        )
        if executor is not None or LOCAL_EXECUTOR not in self.executors:
            self.executors[LOCAL_EXECUTOR] = executor or LocalExecutor()
        self.executor = self.executors[LOCAL_EXECUTOR]
        self._signals: list[int] = []
        self.stopping = False
        self._forced = False
        self._pending_count = 0
        self._claims_waiting: dict[str, float] = {}  # run id -> monotonic time to look again
        self._claims_held: dict[str, Held] = {}  # what those claims hold, from their rows
        self._cancel_seen: set[str] = set()  # cancels asked while the run was still launching
        self._settling: set[str] = set()  # final status queued in the outbox, not yet committed
        self._progress_read: set[str] = set()  # runs whose tail was read since the last flush
        self._read_again: set[str] = set()  # runs with more to read than one read takes
        self._next_rescan = 0.0
        self._next_db_poll = 0.0
        self._next_count = 0.0
        self._count_stale = True
        self._db_unsynced = False  # a database pass failed half-way: look again
        self._next_watchdog = 0.0
        self._last_status = ""
        self._probe = store.change_probe()
        self._runs_watcher: DirectoryWatcher | None = None
        self._db_watcher: DirectoryWatcher | None = None
        self._db_in_runs_watch = False  # one watcher sees both the runs and the database
        self._lock_fd: int | None = None
        # SPEC section 14: when the daemon last served, and its /metrics endpoint if asked for.
        self._heartbeat = Heartbeat(heartbeat_path(settings.database_path, settings.runs_dir))
        self._metrics = MetricsServer.for_settings(settings)
        self.queue = QueueKeeper(self)  # SPEC sections 11 and 13

    # -- life cycle ---------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look around now (called from other threads and signal handlers)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it; the loop acts (uvicorn's rule). A second SIGINT forces exit.
        if signum == signal.SIGINT and self.stopping:
            self._forced = True
        self._signals.append(signum)
        self.wake()

    def run(self) -> int:
        """Serve until asked to stop; returns the exit code."""
        self._acquire_lock()
        if self._metrics is not None:
            self._metrics.start()  # a port in use: refuse to start, one clear line
        self.settings.runs_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._start_watchers()
        self.recover()
        self._guarded(lambda: self._sync_db_or_wait(force=True))
        self._guarded(self._flush)
        self._guarded(lambda: self._count_pending(self.clock.monotonic()))
        self._heartbeat.beat(self.clock.monotonic())  # the file exists once the daemon is ready
        self.notifier.ready(self._status_text())
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
        return not self.runs and not self.launching

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except Exception as exc:  # the daemon never dies of one bad pass
            log.error("loop_error", error=str(exc), error_type=type(exc).__name__, exc_info=True)
            self._db_unsynced = True
            time.sleep(ERROR_BACKOFF_SECONDS)

    def _acquire_lock(self) -> None:
        self.settings.runs_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.runs_dir / DAEMON_LOCK_FILENAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = path.read_text().strip() or "?"
            raise SupervisorError(
                f"another runsup daemon (pid {other}) already serves {self.settings.runs_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _start_watchers(self) -> None:
        runs_dir, db_path = self.settings.runs_dir, self.settings.database_path
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

    def _db_changed(self, changed: set[Path]) -> bool:
        """Whether the watchers saw the database's files change (another program's commit)."""
        if self._db_watcher is not None:
            return bool(self._heartbeat.others(self._db_watcher.drain()))
        db_path = self.settings.database_path
        if not self._db_in_runs_watch or db_path is None:
            return False
        name, folder = db_path.name, db_path.parent
        ours = {p for p in changed if p.parent == folder and p.name.startswith(name)}
        return bool(self._heartbeat.others(ours))

    def _watcher(self, path: Path, *, recursive: bool) -> DirectoryWatcher:
        watcher = DirectoryWatcher(
            [path],
            self.wake,
            recursive=recursive,
            force_polling=self.settings.force_polling,
            poll_delay_ms=self.settings.poll_delay_ms,
        )
        watcher.start()
        return watcher

    def _shutdown(self) -> None:
        # The last STATUS= stays on the unit after it stops: say what was left running.
        self.notifier.stopping(f"stopped, {len(self.runs)} left running")
        for watcher in (self._runs_watcher, self._db_watcher):
            if watcher is not None:
                watcher.stop()
        for flight in list(self.launching.values()):
            # Its keeper (or job) goes on; the next daemon finds the claimed run again.
            flight.launch.abandon()
        self.launching.clear()
        for executor in self.executors.values():
            executor.close()
        self._queue_progress()
        deadline = self.clock.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while not self.outbox.flush(self.clock.monotonic()) and self.clock.monotonic() < deadline:
            time.sleep(max(0.0, self.outbox.retry_at - self.clock.monotonic()))
        if len(self.outbox):
            log.error("writes_lost_at_exit", writes=len(self.outbox), error=self.outbox.last_error)
        for run in list(self.runs.values()):
            # Detach: the keeper goes on and the next daemon re-adopts the run.
            self._forget(run)
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
                self._poll_launch(run_id)
            elif kind == _EXIT:
                self._on_exit(run_id)
            elif kind == _LEFTOVER:
                self._check_group(run_id)
        self._handle_signals()
        now = self.clock.monotonic()
        self._poll_executors()
        self._poll_due_launches(now)
        changed = self._runs_watcher.drain() if self._runs_watcher else set()
        again, self._read_again = self._read_again, set()
        logs = {p for p in changed if p.name == rundir.LOG_FILENAME}
        # A changed log matters only to a run that reads progress from its output; each file
        # read is five system calls, 10,000 a second under the bench's output load.
        self._read_progress(self._runs_touched(changed - logs) | again)
        touched_logs = self._runs_touched(logs)
        self._read_output(touched_logs)
        # Only runs whose log changed: a progress line cannot grow the log (and a cap check
        # per progress batch cost ~8 % of the loop at 10,000 lines/s; bench/ load scenario).
        self._bound_logs(touched_logs, skip_small=True)
        db_hint = self._db_changed(changed)
        if now >= self._next_rescan:
            self._rescan(now)
            self._next_rescan = now + self.settings.rescan_interval_seconds
        queue_due = self.queue.due(now)  # a run's not_before passed: look even if nothing changed
        if db_hint or now >= self._next_db_poll or queue_due:
            self._next_db_poll = now + self.settings.db_poll_interval_seconds
            self._sync_db_or_wait(force=queue_due)
        self.queue.poll_hooks()
        self._check_deadlines(now)
        self._flush()
        self._count_pending(now)
        self._report_status()

    def _next_timeout(self) -> float:
        now = self.clock.monotonic()
        if self._read_again:
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
        yield self._next_watchdog if self.notifier.watchdog_interval else None
        yield self.outbox.retry_at if self.outbox.blocked_since is not None else None
        yield self._next_count if self._count_stale else None
        yield min(self._claims_waiting.values()) if self._claims_waiting else None
        yield self.queue.next_due()
        for executor in self.executors.values():
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
            for run in self.runs.values():
                self.store.request_cancel(run.run_id)
                self._request_cancel(run)
            for flight in list(self.launching.values()):
                self.store.request_cancel(flight.record.id)
                if flight.launch.cancel():  # a queued job removed: never wait for it to start
                    self._end_launch(flight)
                    self._cancel_unstarted(flight.record.id, "cancelled: the daemon stopped")
                else:
                    self._cancel_seen.add(flight.record.id)

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_settings(self.config_file)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc))
        else:
            # Where the runs and the database live cannot change under live runs.
            kept = replace(new, database=self.settings.database, runs_dir=self.settings.runs_dir)
            self.settings = kept
            self.resources = Resources(kept)
            log.info(
                "config_reloaded",
                templates=sorted(kept.templates),
                max_concurrent_runs=kept.max_concurrent_runs,
            )
        self.notifier.ready(self._status_text())

    def _flush(self) -> None:
        self._queue_progress()
        self.outbox.flush(self.clock.monotonic())

    # -- progress -----------------------------------------------------------

    def _runs_touched(self, paths: Iterable[Path]) -> set[str]:
        touched: set[str] = set()
        # String prefix, not Path.relative_to: 0.3 us a path instead of 3.6 (hundreds a pass).
        prefix = str(self.settings.runs_dir).rstrip(os.sep) + os.sep
        cut = len(prefix)
        for path in paths:
            text = str(path)
            if text.startswith(prefix):
                first = text[cut:].partition(os.sep)[0]
                if first in self.runs:
                    touched.add(first)
        return touched

    def _read_progress(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run is not None:
                self._read_tail(run)

    def _read_output(self, run_ids: Iterable[str]) -> None:
        """Read the output tails of these runs (those with progress_patterns)."""
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run is not None and run.output is not None:
                self._progress_read.add(run_id)
                for record in run.output.read():
                    run.progress = run.progress.apply(record)
                if run.output.more:
                    self._read_again.add(run_id)

    def _read_tail(self, run: TrackedRun, *, to_end: bool = False) -> None:
        self._progress_read.add(run.run_id)
        for record in run.tail.read_to_end() if to_end else run.tail.read():
            run.progress = run.progress.apply(record)
        if run.output is not None:
            for record in run.output.read_to_end() if to_end else run.output.read():
                run.progress = run.progress.apply(record)
        if run.tail.more or (run.output is not None and run.output.more):
            self._read_again.add(run.run_id)  # a burst: go on next pass, without waiting

    def _queue_progress(self) -> None:
        # Only runs whose tail was read can have new progress: with 200 runs, comparing every
        # run on every pass (half the passes read nothing) cost ~2 % of a core (bench/ load).
        for run_id in self._progress_read:
            run = self.runs.get(run_id)
            if run is None:
                continue
            update = run.progress_update()
            if update != run.flushed:
                self.outbox.progress(update)
                run.flushed = update
        self._progress_read.clear()

    def _rescan(self, now: float) -> None:
        """The truth behind the hints: re-read every progress file, look at every run."""
        for run in list(self.runs.values()):
            self._read_tail(run)
        self._bound_logs(list(self.runs))
        self._checkpoint_if_large()
        for run in list(self.runs.values()):
            if run.state.exit is None:
                self._on_exit(run.run_id)

    def _bound_logs(self, run_ids: Iterable[str], *, skip_small: bool = False) -> None:
        """Cut the logs of these runs that passed max_log_bytes. `skip_small`: trust an output
        tail's offset to show a log still far below the cap (no stat; the rescan checks all)."""
        far_below = self.settings.max_log_bytes - MAX_READ_BYTES
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run is None or (skip_small and run.output and run.output.offset < far_below):
                continue
            if self._bound_log(run.run_dir) and run.output is not None:
                self._read_tail(run)  # the output tail finds its place again; saved this pass

    def _bound_log(self, run_dir: Path) -> bool:
        """Cut the middle of the run's log once it is past max_log_bytes (see logcap); True if
        it was cut."""
        try:
            cut = logcap.bound_log(rundir.log_path(run_dir), self.settings.max_log_bytes)
        except OSError as exc:
            log.warning("log_cut_failed", run_dir=str(run_dir), error=str(exc))
            return False
        if cut.removed:
            log.info(
                "log_cut",
                run_dir=str(run_dir),
                removed_bytes=cut.removed,
                size_after=cut.size_after,
                method=cut.method,
            )
        return bool(cut.removed)

    def _checkpoint_if_large(self) -> None:
        path = self.settings.database_path
        if path is None:
            return
        try:
            size = os.stat(f"{path}-wal").st_size
        except OSError:
            return
        if size <= self.settings.wal_checkpoint_bytes:
            return
        if self.store.checkpoint():
            log.info("wal_checkpointed", wal_bytes_before=size)
        else:  # a reader holds an old snapshot: again at the next rescan
            log.debug("wal_checkpoint_deferred", wal_bytes=size)

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
                self._on_cancel_request(record)
            self._watch_foreign()
        self.queue.sync(others=full)
        if not self.stopping:
            self._launch_pending()
        self._count_stale = True  # for STATUS= only: counted at most once a second
        self._db_unsynced = False

    def _count_pending(self, now: float) -> None:
        if self._count_stale and now >= self._next_count:
            self._pending_count = self.store.count_status(RunStatus.PENDING)
            self._next_count = now + STATUS_COUNT_INTERVAL_SECONDS
            self._count_stale = False

    def _on_cancel_request(self, record: RunRecord) -> None:
        run = self.runs.get(record.id)
        if run is not None:
            if not run.state.cancel_requested:
                self._request_cancel(run)
        elif record.id in self.launching:
            flight = self.launching[record.id]
            if flight.launch.cancel():  # a queued job removed: it never starts
                self._end_launch(flight)
                self._cancel_unstarted(record.id, "cancelled before it started")
            else:
                self._cancel_seen.add(record.id)  # acted on as soon as the launch reports
        elif (
            record.status == RunStatus.PENDING
            and record.launch_claimed_at is None
            and self.store.transition(
                record.id,
                RunStatus.CANCELLED,
                reason="cancelled before start",
                expect=[RunStatus.PENDING],
                values={"error_message": "cancelled before it started"},
            )
        ):
            log.info("run_cancelled_pending", run_id=record.id)

    def _request_cancel(self, run: TrackedRun) -> None:
        self._act(run, run.state.request_cancel(self.clock.monotonic()))

    def _free_slots(self) -> int:
        """Local runs that may start now (runs on other executors do not count)."""
        busy = sum(r.executor == LOCAL_EXECUTOR for r in self.runs.values())
        busy += sum(f.executor == LOCAL_EXECUTOR for f in self.launching.values())
        # Claims found still starting after a restart hold a slot, local ones only (_claims_held).
        return self.settings.max_concurrent_runs - busy - len(self._claims_held)

    def _cluster_slots(self) -> dict[str, int]:
        """For each other executor: how many more of its runs may be launched now."""
        free: dict[str, int] = {}
        for name, executor in self.executors.items():
            if name == LOCAL_EXECUTOR or executor.max_in_flight is None:
                continue
            busy = sum(r.executor == name for r in self.runs.values())
            busy += sum(f.executor == name for f in self.launching.values())
            free[name] = executor.max_in_flight - busy
        return free

    def _launch_pending(self) -> None:
        free = max(0, self._free_slots())
        cluster = self._cluster_slots()
        want = free + sum(max(0, n) for n in cluster.values())
        if want <= 0:
            return
        # First just enough rows to fill the free slots (the common case costs no more); when
        # some of them wait for resources, look a little further down the queue, so that a
        # run that waits never holds back smaller ones behind it (scheduling.py).
        plan = self._plan(want)
        if plan.waiting and plan.examined >= want and len(plan.start) < want:
            plan = self._plan(want + SCHEDULING_LOOKAHEAD)
        for run_id, why in plan.impossible.items():
            self._fail_unstarted_now(run_id, why)
        starts = self._within_executor_limits(plan.start, cluster)
        claimed = set(self.store.claim_many([s.claim() for s in starts]))
        for start in starts:
            if start.record.id in claimed:  # else cancelled or taken in the meantime
                crash_point("launch_claimed")
                crash_point(f"launch_claimed:{attempt_number(start.record.attempt)}")
                self._begin_launch(start)

    def _plan(self, limit: int) -> Plan:
        """A scheduling pass over the first `limit` PENDING runs in queue order."""
        templates = self.settings.templates
        candidates = []
        for record in self.queue.pickup(limit):
            problem = launchprep.row_problem(record, templates)
            if problem is not None:
                self._fail_unstarted_now(record.id, problem)
            else:
                candidates.append((record, templates[record.template]))
        return self.resources.plan(candidates, self._held(), templates, self._per_template())

    def _within_executor_limits(self, starts: Iterable[Start], free: dict[str, int]) -> list[Start]:
        """The planned starts each executor can take now (max_submitted); a run of an executor
        that is not available fails to start, saying so."""
        kept = []
        for start in starts:
            name = start.template.executor
            if name == LOCAL_EXECUTOR:
                kept.append(start)
            elif name not in self.executors:
                why = f"executor {name!r} is not available (see the daemon's log)"
                self._fail_unstarted_now(start.record.id, why)
            elif free.get(name, 0) > 0:
                free[name] -= 1
                kept.append(start)
        return kept

    def _held(self) -> dict[str, Held]:
        """What every local run the loop is responsible for holds (a cluster holds its own)."""
        held = {i: r.held for i, r in self.runs.items() if r.executor == LOCAL_EXECUTOR}
        held.update((i, f.held) for i, f in self.launching.items() if f.executor == LOCAL_EXECUTOR)
        held.update(self._claims_held)
        return held

    def _per_template(self) -> dict[str, int]:
        names = [run.template_name for run in self.runs.values()]
        names += [f.template.name for f in self.launching.values()]
        return running_per_template(names)

    def _runs_dir(self, executor: str | None) -> Path:
        """Where the runs of this executor have their directories."""
        found = self.executors.get(executor or LOCAL_EXECUTOR)
        return (found.runs_dir if found else None) or self.settings.runs_dir

    def _begin_launch(self, start: Start) -> None:
        record, template, held = start.record, start.template, start.held
        runs_dir = self._runs_dir(template.executor)
        run_dir = rundir.run_dir_for(runs_dir, record.id)
        try:
            # Claimed just before: a job looked for by name must be younger than this.
            claimed_at = self.clock.utcnow()
            spec = launchprep.prepare(record, template, runs_dir, held, claimed_at=claimed_at)
            launch = self.executors[template.executor].begin_launch(spec)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._fail_unstarted(record.id, f"cannot prepare run directory {run_dir}: {reason}")
            return
        except SupervisorError as exc:
            self._fail_unstarted(record.id, str(exc))
            return
        crash_point("launch_spawned")
        fd = launch.fileno()
        if fd is not None:
            self.selector.register(fd, selectors.EVENT_READ, (_LAUNCH, record.id))
        self.launching[record.id] = InFlight(
            launch, record, template, run_dir, held, fd, executor=template.executor
        )
        self._record_external_id(self.launching[record.id])

    def _poll_due_launches(self, now: float) -> None:
        for run_id, flight in list(self.launching.items()):
            if now >= flight.launch.deadline:
                self._poll_launch(run_id)

    def _poll_executors(self) -> None:
        """Executors that look at their runs in batches: act on what has news (never waits)."""
        for executor in self.executors.values():
            if executor.poll_interval is None:
                continue
            for run_id in executor.poll():
                if run_id in self.launching:
                    self._poll_launch(run_id)
                elif run_id in self.runs:
                    self._on_exit(run_id)
                    run = self.runs.get(run_id)
                    if run is not None and run.state.exit is not None:
                        self._check_group(run_id)

    def _poll_launch(self, run_id: str) -> None:
        flight = self.launching.get(run_id)
        if flight is None:
            return
        try:
            handle = flight.launch.poll()
        except LaunchCancelled as exc:  # a queued job removed on a cancel: it never started
            self._end_launch(flight)
            self._cancel_unstarted(run_id, str(exc))
            return
        except LaunchError as exc:
            self._end_launch(flight)
            self._fail_unstarted(run_id, str(exc))
            return
        self._record_external_id(flight)
        if handle is None:
            return
        self._end_launch(flight)
        self._started(flight, handle)

    def _record_external_id(self, flight: InFlight) -> None:
        """A cluster job's id goes into the row as soon as it exists (before anything relies
        on it: a restarted daemon finds the job by it)."""
        ext = flight.launch.external_id
        if ext is not None and not flight.external_recorded:
            crash_point(f"job_submitted:{attempt_number(flight.record.attempt)}")
            self.outbox.add(external_id_change(flight.record.id, ext))
            flight.external_recorded = True
            log.info("run_submitted", run_id=flight.record.id, external_id=ext)

    def _end_launch(self, flight: InFlight) -> None:
        self.launching.pop(flight.record.id, None)
        if flight.fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(flight.fd)

    def _started(self, flight: InFlight, handle: RunHandle) -> None:
        """A launch reported its process: RUNNING (with pid and pgid) goes out with this pass."""
        record = flight.record
        proc = handle.record
        change = running(record.id, proc, flight.run_dir, "launched")
        self.outbox.add(change, lambda applied: self._running_recorded(record.id, applied))
        log.info(
            "run_started",
            run_id=record.id,
            pid=proc.pid,
            pgid=proc.pgid,
            keeper_pid=proc.keeper_pid,
            external_id=proc.external_id,
        )
        fresh = replace(record, status=RunStatus.RUNNING.value, started_at=self.clock.utcnow())
        run = self._track(
            fresh,
            handle,
            flight.run_dir,
            flight.template,
            held=flight.held,
            executor=flight.executor,
        )
        if record.id in self._cancel_seen:
            self._cancel_seen.discard(record.id)
            self._request_cancel(run)

    def _running_recorded(self, run_id: str, applied: bool) -> None:
        if applied:
            return
        # Only a foreign program rewriting our row gets here: do not leave a run unowned.
        run = self.runs.get(run_id)
        log.error("run_row_changed_under_launch", run_id=run_id)
        if run is not None:
            run.handle.signal_group(signal.SIGKILL)
            self._forget(run)

    def _fail_unstarted(self, run_id: str, reason: str) -> None:
        """PENDING -> FAILED (could not start), committed with this pass's other writes."""
        out = outcomes.not_started(reason)
        change = final_change(
            run_id,
            out.status,
            reason=out.reason,
            error_message=out.error_message,
            expect=[RunStatus.PENDING],
        )
        self.outbox.add(change)
        log.warning("run_not_started", run_id=run_id, error=reason)

    def _cancel_unstarted(self, run_id: str, why: str) -> None:
        """PENDING -> CANCELLED for a launch stopped before it started (a queued job removed)."""
        change = final_change(
            run_id,
            RunStatus.CANCELLED,
            reason="cancelled before start",
            error_message=why,
            expect=[RunStatus.PENDING],
        )
        self._settling.add(run_id)
        out = Outcome(RunStatus.CANCELLED, None, None, why, "cancelled before start")
        self.outbox.add(change, lambda applied: self._settled(run_id, out, applied))

    def _fail_unstarted_now(self, run_id: str, reason: str) -> None:
        """As _fail_unstarted, for an unclaimed row: written at once, or the next pass sees it
        PENDING again (if the database is locked, the pass fails and is tried again)."""
        out = outcomes.not_started(reason)
        if self.store.commit_batch(
            [
                final_change(
                    run_id,
                    out.status,
                    reason=out.reason,
                    error_message=out.error_message,
                    expect=[RunStatus.PENDING],
                )
            ]
        )[0]:
            log.warning("run_not_started", run_id=run_id, error=reason)

    # -- tracked runs ---------------------------------------------------------

    def _track(
        self,
        record: RunRecord,
        handle: RunHandle,
        run_dir: Path,
        template: Template | None,
        *,
        foreign: bool = False,
        held: Held | None = None,
        executor: str | None = None,
    ) -> TrackedRun:
        timeout = template.timeout_seconds if template else None
        now = self.clock.monotonic()
        timeout_at = None
        if timeout is not None:
            timeout_at = now + max(0.0, timeout - self._run_age(record))
        state = RunState(
            grace_seconds=self.settings.cancel_grace_seconds,
            timeout_at=timeout_at,
            cause=stop_cause(record),
            stop_leftovers=not foreign,
            **self._checkpoint_warning(template, executor or record.executor, timeout_at),
        )
        tail, output = tails_for(record, run_dir, template)
        run = TrackedRun(
            run_id=record.id,
            run_dir=run_dir,
            template=template,
            template_name=record.template,
            held=held if held is not None else Held.of_row(record),
            executor=executor or record.executor or LOCAL_EXECUTOR,
            handle=handle,
            tail=tail,
            progress=progress_of(record),
            state=state,
            foreign=foreign,
            output=output,
            attempt=attempt_number(record.attempt),
        )
        run.flushed = run.progress_update()
        self.runs[record.id] = run
        fd = handle.fileno()
        if fd is not None:
            self.selector.register(fd, selectors.EVENT_READ, (_EXIT, record.id))
            run.exit_fd = fd
        self._read_tail(run)
        self._act(run, state.start(now))
        return run

    def _checkpoint_warning(
        self, template: Template | None, executor: str | None, timeout_at: float | None
    ) -> dict[str, Any]:
        """SPEC section 15: the checkpoint signal `checkpoint_seconds` before the time limit,
        sent by the loop unless the run's executor has it sent where the run runs."""
        found = self.executors.get(executor or LOCAL_EXECUTOR)
        if template is None or template.checkpoint_signal is None or timeout_at is None:
            return {}
        if found is None or found.signals_checkpoints:
            return {}
        lead = template.checkpoint_seconds or 0.0
        number = signal.Signals[f"SIG{template.checkpoint_signal}"]
        return {"checkpoint_at": timeout_at - lead, "checkpoint_signal": number}

    def _forget(self, run: TrackedRun) -> None:
        self._unwatch_exit(run)
        self._unwatch_leftover(run)
        run.handle.close()
        self.runs.pop(run.run_id, None)

    def _unwatch_exit(self, run: TrackedRun) -> None:
        if run.exit_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(run.exit_fd)
            run.exit_fd = None

    def _unwatch_leftover(self, run: TrackedRun) -> None:
        if run.leftover_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(run.leftover_fd)
            run.leftover_fd = None

    def _act(self, run: TrackedRun, actions: list[SendSignal | MarkTimedOut]) -> None:
        """Carry out what the run's state machine decided."""
        for action in actions:
            if isinstance(action, MarkTimedOut):
                self.outbox.add(timed_out_change(run.run_id))
                continue
            if action.signal == signal.SIGKILL:
                crash_point("cancel_escalating")
                if run.handle.group_alive():
                    run.handle.signal_group(signal.SIGKILL)
                    log.warning("run_killed", run_id=run.run_id, pgid=run.handle.record.pgid)
                if run.state.exit is not None:  # else the run's end wakes the loop
                    self._schedule_group_check(run, reset=True)
                continue
            sent = run.handle.signal_group(action.signal)
            if action.why == CHECKPOINT_WHY:
                log.info("run_checkpoint_signal", run_id=run.run_id, sent=sent)
                continue
            log.info(
                "run_terminating",
                run_id=run.run_id,
                pgid=run.handle.record.pgid,
                why=action.why,
                sent=sent,
            )
            crash_point("cancel_term_sent")

    def _check_deadlines(self, now: float) -> None:
        for run in list(self.runs.values()):
            self._act(run, run.state.tick(now))
            if run.group_check_at is not None and now >= run.group_check_at:
                run.group_check_at = None  # _try_settle schedules the next look if needed
                self._check_group(run.run_id)
        for run_id, due in list(self._claims_waiting.items()):
            if now >= due:
                self._recheck_claim(run_id)

    def _on_exit(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None or run.state.exit is not None:
            return
        status = run.handle.exit_status()
        if status is None:
            return
        self._unwatch_exit(run)
        log.info(
            "run_exited",
            run_id=run_id,
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
        )
        crash_point("run_exited")
        self._read_tail(run, to_end=True)
        alive = run.handle.group_alive()
        self._act(run, run.state.on_exit(status, self.clock.monotonic(), group_alive=alive))
        self._try_settle(run, group_alive=alive)

    def _check_group(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.state.exit is not None:
            self._try_settle(run, group_alive=run.handle.group_alive())

    def _schedule_group_check(self, run: TrackedRun, *, reset: bool = False) -> None:
        """Look at a lingering group again: when the leftover we watch ends, or on a timer."""
        self._unwatch_leftover(run)
        fd = run.handle.leftover_fileno()
        if fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.register(fd, selectors.EVENT_READ, (_LEFTOVER, run.run_id))
                run.leftover_fd = fd
        if reset:
            run.group_check_delay = GROUP_CHECK_FIRST_SECONDS
        run.group_check_at = self.clock.monotonic() + run.group_check_delay
        run.group_check_delay = min(run.group_check_delay * 2, GROUP_CHECK_MAX_SECONDS)

    def _try_settle(self, run: TrackedRun, *, group_alive: bool) -> None:
        """Decide the run's final status once its process and its whole group are gone."""
        if run.state.exit is None or run.state.phase in (Phase.EXITED, Phase.SETTLED):
            return
        if group_alive:
            self._schedule_group_check(run)
            return
        self._unwatch_leftover(run)
        run.group_check_at = None
        run.state.group_gone()
        self._bound_log(run.run_dir)  # the last cut: nothing writes to it any more
        out = self._classify(run, run.state.exit)
        self._progress_read.add(run.run_id)
        self._queue_progress()
        self._settle(run.run_id, out, reason=out.reason, peak=run.state.exit.peak_memory_bytes)

    def _classify(self, run: TrackedRun, status: ExitStatus) -> Outcome:
        if run.foreign:
            p = run.progress
            return outcomes.foreign_end(
                completed_ok=p.completed_ok, last_error=p.last_error, cancelled=run.state.cancelled
            )
        if status.out_of_memory:
            cap = run.held.memory_max_bytes or 0
            return outcomes.out_of_memory(cap, status.peak_memory_bytes)
        if status.verdict in outcomes.CLUSTER_VERDICTS and not run.state.cancelled:
            return outcomes.cluster_failure(status.verdict or "", status.describe())
        if not status.known:
            return outcomes.lost(
                "exit status unknown: the run's keeper process ended without recording it"
            )
        if self._checkpointed(run, status):
            return outcomes.checkpointed(status.exit_code or 0)
        return self._plain_exit(run, status)

    @staticmethod
    def _checkpointed(run: TrackedRun, status: ExitStatus) -> bool:
        """The attempt exited with its template's checkpoint_exit_code, uncancelled and
        before any time limit of the daemon's (SPEC section 15)."""
        code = run.template.checkpoint_exit_code if run.template else None
        return (
            code is not None
            and status.exit_signal is None
            and status.exit_code == code
            and not run.state.cancel_requested
            and not run.state.timed_out
        )

    def _plain_exit(self, run: TrackedRun, status: ExitStatus) -> Outcome:
        return outcomes.classify_exit(
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
            cancel_requested=run.state.cancelled,
            timed_out=run.state.timed_out or status.verdict == "timeout",
            timeout_seconds=run.timeout_seconds,
            last_error=run.progress.last_error,
            # The log is read only for a run that failed (it quotes its last lines).
            log_tail=None if status.exit_code == 0 else log_tail(run.run_dir),
        )

    def _settle(
        self, run_id: str, out: Outcome, *, reason: str, peak: int | None = None
    ) -> None:
        retry = self.queue.retry_change(run_id, out, reason)  # its next attempt, if it has one
        if retry is None and out.kind == outcomes.CHECKPOINTED:
            # It cannot go on (its row moved under us): settle it as the exit it was.
            out = outcomes.classify_exit(
                exit_code=out.exit_code, exit_signal=None, cancel_requested=False, timed_out=False
            )
            reason = out.reason
            retry = self.queue.retry_change(run_id, out, reason)
        if retry is not None:
            self.outbox.add(
                retry, lambda applied: self._retried(run_id, out, reason, applied, peak)
            )
            return
        self._settle_final(run_id, out, reason=reason, peak=peak)

    def _retried(
        self, run_id: str, out: Outcome, reason: str, applied: bool, peak: int | None
    ) -> None:
        if not applied:  # the row left RUNNING under us: settle it as any other run
            self._settle_final(run_id, out, reason=reason, peak=peak)
            return
        log.info("run_retry_queued", run_id=run_id)
        run = self.runs.get(run_id)
        crash_point(f"retry_committed:{run.attempt if run is not None else 0}")
        if run is not None:
            run.state.settled()
            run.handle.release()
            self._forget(run)
        self.wake()
        self._next_db_poll = 0.0

    def _settle_final(
        self, run_id: str, out: Outcome, *, reason: str, peak: int | None = None
    ) -> None:
        change = final_change(
            run_id,
            out.status,
            reason=reason,
            exit_code=out.exit_code,
            exit_signal=out.exit_signal,
            error_message=out.error_message,
            peak_memory_bytes=peak,
        )
        self._settling.add(run_id)
        self.outbox.add(change, lambda applied: self._settled(run_id, out, applied))

    def _settled(self, run_id: str, out: Outcome, applied: bool) -> None:
        if not applied and self._correct(run_id, out):
            return
        self._settling.discard(run_id)
        log.info(
            "run_finished",
            run_id=run_id,
            status=out.status.value,
            exit_code=out.exit_code,
            exit_signal=out.exit_signal,
            recorded=applied,
        )
        run = self.runs.get(run_id)
        if run is not None:
            run.state.settled()
            run.handle.release()
            self._forget(run)
        self.wake()  # a slot is free: look for pending runs now
        self._next_db_poll = 0.0

    # -- start-up: re-adopt what is still going, settle what ended ------------

    def _correct(self, run_id: str, out: Outcome) -> bool:
        """Our final write was refused: if another program wrote a final status over the run
        while it still lived, write the true outcome over it (SPEC section 3). True if queued."""
        record = self.store.find(run_id)
        if record is None or not record.is_final:
            return False  # deleted, or moved on in a way we do not override
        was = RunStatus(record.status)
        change = corrected_final_change(
            run_id,
            was,
            out.status,
            reason=out.reason,
            exit_code=out.exit_code,
            exit_signal=out.exit_signal,
            error_message=out.error_message,
        )
        log.warning("run_outcome_corrected", run_id=run_id, was=was.value, now=out.status.value)
        self.outbox.add(change, lambda applied: self._settled(run_id, out, True))
        return True

    # -- runs another program started (SPEC section 3) -----------------------

    def _watch_foreign(self) -> None:
        """Take on RUNNING rows another program started: watch, cancel and settle them."""
        for record in self.store.foreign_running():
            if record.id not in self.runs and record.id not in self._settling:
                self._adopt_foreign(record)

    def _adopt_foreign(self, record: RunRecord) -> None:
        run_dir = recovery.record_dir_of(record, self.settings.runs_dir)
        same_boot = record.boot_id == current_boot_id()
        handle = self.executor.adopt_foreign(
            record.id,
            pid=record.pid,
            pgid=record.pgid,
            started_at=record.started_at,
            start_ticks=record.pid_start_ticks if same_boot else None,
            record_dir=rundir.record_dir(run_dir),
        )
        if handle is None:
            # Every process of its group has exited: settle it by what its progress says.
            template = self.settings.templates.get(record.template)
            state, update = read_on(record, run_dir, template)
            self.outbox.progress(update)
            out = outcomes.foreign_end(completed_ok=state.completed_ok, last_error=state.last_error)
            self._settle(record.id, out, reason=f"{out.reason} (started by another program)")
            return
        proc = handle.record
        if record.pid_start_ticks != proc.start_ticks or not same_boot:
            self.outbox.add(foreign_identity_change(record.id, proc))
        template = self.settings.templates.get(record.template)
        run = self._track(record, handle, run_dir, template, foreign=True)
        if handle.exit_status() is not None:
            self._on_exit(run.run_id)

    # -- start-up: re-adopt what is still going, settle what ended ------------

    def recover(self) -> None:
        """Find every run an earlier daemon was responsible for and take it on again."""
        found = self.store.active_runs() + self.store.overturned_runs(current_boot_id())
        for record in found:
            try:
                self._recover_one(record)
            except Exception as exc:
                log.error("recover_failed", run_id=record.id, error=str(exc), exc_info=True)

    def _recover_one(self, record: RunRecord) -> None:
        problem = launchprep.id_problem(record.id)
        if problem is not None:
            self._settle_invalid(record, problem)
            return
        if record.status == RunStatus.RUNNING and record.keeper_pid is None:
            self._adopt_foreign(record)
            return
        name = record.executor or LOCAL_EXECUTOR
        executor = self.executors.get(name)
        if executor is None:
            # Its job was sent where this configuration no longer reaches: leave the row as
            # it is (the job may still run) and say so at every start.
            log.error("run_executor_missing", run_id=record.id, executor=name)
            return
        run_dir = recovery.record_dir_of(record, self._runs_dir(name))
        ref = RunRef(
            run_id=record.id,
            record_dir=rundir.record_dir(run_dir),
            process=recovery.process_of(record),
            claimed=record.status == RunStatus.PENDING,
            external_id=record.external_id,
            host=record.host,
            attempt=attempt_number(record.attempt),
            claimed_at=record.launch_claimed_at,
        )
        recovery.apply(_Host(self, run_dir), record, executor.recover(ref))

    def _settle_invalid(self, record: RunRecord, why: str) -> None:
        if record.status == RunStatus.PENDING:
            self._fail_unstarted(record.id, why)
        else:
            out = outcomes.lost(why)
            self.outbox.add(
                final_change(record.id, out.status, reason=out.reason, error_message=why)
            )

    def _recheck_claim(self, run_id: str) -> None:
        """A claim whose keeper was still starting at the last look: look again."""
        self._claims_waiting.pop(run_id, None)
        self._claims_held.pop(run_id, None)
        record = self.store.find(run_id)
        if record is None or record.status != RunStatus.PENDING:
            return
        self._recover_one(record)

    def settle_offline(self, record: RunRecord, run_dir: Path, status: ExitStatus) -> None:
        """A run that ended while no daemon watched: its keeper kept the true status.

        Its progress is read on from where the last daemon stopped (not from the start), and
        the final progress is committed with the final status.
        """
        template = self.settings.templates.get(record.template)
        state, update = read_on(record, run_dir, template)  # before the last log cut
        self._bound_log(run_dir)
        self.outbox.progress(update)
        cause = stop_cause(record)
        code = template.checkpoint_exit_code if template else None
        if code is not None and cause is None and status.known and status.exit_code == code:
            out = outcomes.checkpointed(code)
            self._settle(record.id, out, reason=f"{out.reason} (while the daemon was away)")
            log.info("run_settled_offline", run_id=record.id, status=out.status.value)
            return
        out = outcomes.classify_exit(
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
            cancel_requested=cause is StopCause.CANCEL,
            timed_out=cause is StopCause.TIMEOUT,
            timeout_seconds=template.timeout_seconds if template else None,
            last_error=state.last_error,
            log_tail=log_tail(run_dir),
        )
        self._settle(record.id, out, reason=f"{out.reason} (while the daemon was away)")
        log.info("run_settled_offline", run_id=record.id, status=out.status.value)

    # -- systemd status -------------------------------------------------------

    def _status_text(self) -> str:
        parts = [f"{len(self.runs)} running, {self._pending_count} pending"]
        parts.extend(self.queue.status_parts())
        waiting = self.outbox.status(self.clock.monotonic())
        if waiting:
            parts.append(waiting)
        for watcher in (self._runs_watcher, self._db_watcher):
            if watcher is not None and watcher.failed is not None:
                # Progress then arrives only with each rescan: the operator should know why.
                parts.append(f"file watching down, rescanning ({watcher.failed})")
        return "; ".join(parts)

    def _report_status(self) -> None:
        text = self._status_text()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = time.monotonic() + interval
        if self._heartbeat.beat(self.clock.monotonic()) and self._metrics is not None:
            self._metrics.check(self.clock.monotonic())

    def _run_age(self, record: RunRecord) -> float:
        """Seconds the run has been going: by the kernel's boot clock from its process's start
        time when known (an adopted run; immune to wall-clock jumps), else by started_at."""
        if record.pid_start_ticks is not None and record.boot_id == current_boot_id():
            with contextlib.suppress(OSError, ValueError):
                return max(0.0, process_age_seconds(record.pid_start_ticks))
        now = self.clock.utcnow()
        started = record.started_at or now
        return max(0.0, (now - started).total_seconds())


class _Host:
    """What recovery decides, carried out by the loop (recovery.RecoveryHost)."""

    def __init__(self, daemon: Daemon, run_dir: Path) -> None:
        self._d = daemon
        self._run_dir = run_dir

    def mark_running(self, record: RunRecord, process: ProcessRecord, reason: str) -> None:
        """PENDING -> RUNNING for a claim found started; retried until committed."""
        change = running(record.id, process, self._run_dir, reason)
        self._d.outbox.add(change, lambda ok: self._d._running_recorded(record.id, ok))

    def track(self, record: RunRecord, handle: RunHandle) -> None:
        """Watch the run from now on."""
        if record.status == RunStatus.PENDING:
            # A claim found started: its process's start time dates it (for its timeout).
            proc = handle.record
            record = replace(
                record,
                status=RunStatus.RUNNING.value,
                pid_start_ticks=proc.start_ticks,
                boot_id=proc.boot_id,
            )
        template = self._d.settings.templates.get(record.template)
        run = self._d._track(record, handle, self._run_dir, template)
        if handle.exit_status() is not None:
            self._d._on_exit(run.run_id)

    def record_process(self, record: RunRecord, process: ProcessRecord) -> None:
        """The row names the run's new process group (a cluster job's new stand-in)."""
        self._d.outbox.add(standin_change(record.id, process))
        log.info("run_process_changed", run_id=record.id, pid=process.pid)

    def settle_offline(self, record: RunRecord, status: ExitStatus) -> None:
        """Settle with the status the keeper kept."""
        self._d.settle_offline(record, self._run_dir, status)

    def settle_lost(self, record: RunRecord, why: str) -> None:
        """FAILED: exit status unknown."""
        out = outcomes.lost(why)
        self._d._settle(record.id, out, reason=out.reason)
        log.warning("run_lost", run_id=record.id, reason=why)

    def fail_unstarted(self, record: RunRecord, why: str) -> None:
        """PENDING -> FAILED."""
        self._d._fail_unstarted(record.id, why)

    def release_claim(self, record: RunRecord, why: str) -> None:
        """Nothing started: launch it again."""
        self._d.outbox.add(claim_released_change(record.id))
        self._d._next_db_poll = 0.0
        log.warning("launch_claim_released", run_id=record.id, why=why)

    def resume_launch(self, record: RunRecord, launch: Launch) -> None:
        """Its job is still queued: an in-flight launch again, its id already in the row."""
        template = self._d.settings.templates.get(record.template)
        if template is None:
            launch.abandon()
            self._d._fail_unstarted(record.id, f"unknown template {record.template!r}")
            return
        fd = launch.fileno()
        if fd is not None:
            self._d.selector.register(fd, selectors.EVENT_READ, (_LAUNCH, record.id))
        flight = InFlight(
            launch,
            record,
            template,
            self._run_dir,
            Held.of_row(record),
            fd,
            executor=record.executor or LOCAL_EXECUTOR,
            external_recorded=record.external_id is not None,
        )
        self._d.launching[record.id] = flight
        self._d._record_external_id(flight)
        log.info("launch_resumed", run_id=record.id, external_id=launch.external_id)

    def look_again_later(self, record: RunRecord, why: str) -> None:
        """Its keeper is still starting."""
        self._d._claims_waiting[record.id] = self._d.clock.monotonic() + CLAIM_RECHECK_SECONDS
        if (record.executor or LOCAL_EXECUTOR) == LOCAL_EXECUTOR:  # a cluster holds its own
            self._d._claims_held[record.id] = Held.of_row(record)
        log.info("launch_still_starting", run_id=record.id, why=why)


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


def run_daemon(settings: Settings, *, config_file: str | None = None) -> int:
    """Open the database (upgrading its schema) and serve until SIGTERM or SIGINT."""
    # Nothing the daemon, a keeper or a simulation creates is writable by group or others,
    # nor open to others, whatever umask we were started with (a stricter one is kept).
    os.umask(os.umask(UMASK_FLOOR) | UMASK_FLOOR)
    path = settings.database_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    Store.open(settings.database_url).close()  # upgrade the schema, waiting as long as it takes
    store = Store.open(
        settings.database_url,
        upgrade=False,
        busy_timeout_ms=LOOP_BUSY_TIMEOUT_MS,
        write_attempts=1,
    )
    try:
        return Daemon(settings, store, config_file=config_file).run()
    finally:
        store.close()
