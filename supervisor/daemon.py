"""The supervision loop: composes the store, the process backend, progress tails and watchers.

One thread runs the loop; signal handlers and watcher threads only record and wake it.
Everything the loop waits for is a file descriptor (a wake pipe, one per run) or a deadline,
so it is idle when nothing happens and reacts within milliseconds when something does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from supervisor import logcap, rundir
from supervisor import outcome as outcomes
from supervisor.db import ProgressUpdate, RunRecord, Store, is_valid_run_id, utcnow
from supervisor.errors import ConfigError, LaunchError, SupervisorError
from supervisor.notify import Notifier, scrub_environment
from supervisor.outcome import Outcome
from supervisor.processes import (
    Backend,
    ExitStatus,
    LaunchSpec,
    LocalBackend,
    ProcessRecord,
    Recovered,
    RunHandle,
    current_boot_id,
    process_age_seconds,
)
from supervisor.progress import ProgressState, ProgressTail
from supervisor.settings import Settings, Template, load_settings
from supervisor.states import RunStatus
from supervisor.watch import DirectoryWatcher

log = structlog.get_logger(__name__)

# While a run's process has exited but others remain in its group, look again this often.
GROUP_POLL_INTERVAL_SECONDS = 0.05
# After an error in one pass of the loop, wait this long before the next (no hot spin).
ERROR_BACKOFF_SECONDS = 1.0
# How much of the log end to quote when a run fails without an error record.
LOG_TAIL_BYTES = 4096
DAEMON_LOCK_FILENAME = ".daemon.lock"
# Bits always added to the daemon's umask (hence its runs'): as systemd's UMask=0027.
UMASK_FLOOR = 0o027
# Crash points for fault-injection tests; inert unless this variable names one.
CRASH_POINT_VARIABLE = "RUNSUP_TEST_CRASH_POINT"


def crash_point(name: str) -> None:
    """Die at once, as a SIGKILL would, if a test armed this point (does nothing otherwise)."""
    if os.environ.get(CRASH_POINT_VARIABLE) == name:
        log.warning("crash_point_reached", point=name)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ActiveRun:
    """What the loop keeps in memory about a run it is responsible for."""

    run_id: str
    run_dir: Path
    handle: RunHandle
    tail: ProgressTail
    state: ProgressState
    timeout_seconds: float | None
    timeout_at: float | None  # monotonic
    cancel_requested: bool = False
    timed_out: bool = False
    term_sent_at: float | None = None  # monotonic
    kill_sent: bool = False
    exit: ExitStatus | None = None
    outcome: Outcome | None = None
    flushed: ProgressUpdate | None = None

    def progress_update(self) -> ProgressUpdate:
        """The run's progress as a row update."""
        s = self.state
        return ProgressUpdate(
            run_id=self.run_id,
            current_erlang=s.current_erlang,
            total_erlangs=s.total_erlangs,
            current_iteration=s.current_iteration,
            total_iterations=s.total_iterations,
            erlang_index=s.erlang_index,
            offset=self.tail.offset,
            bad_lines=self.tail.bad_lines,
        )


class Daemon:
    """The supervisor: takes PENDING runs, watches them, settles them, survives restarts."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        backend: Backend | None = None,
        notifier: Notifier | None = None,
        config_file: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend: Backend = backend or LocalBackend()
        self.notifier = notifier or Notifier.from_environ()
        self.config_file = config_file
        self.runs: dict[str, ActiveRun] = {}
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals: list[int] = []
        self.stopping = False
        self._forced = False
        self._pending_count = 0
        self._claims_waiting: dict[str, float] = {}  # run id -> monotonic time first seen
        self._progress_read: set[str] = set()  # runs whose tail was read since the last flush
        self._next_rescan = 0.0
        self._next_db_poll = 0.0
        self._db_unsynced = False  # a database pass failed half-way: look again
        self._next_watchdog = 0.0
        self._last_status = ""
        self._probe = store.change_probe()
        self._runs_watcher: DirectoryWatcher | None = None
        self._db_watcher: DirectoryWatcher | None = None
        self._lock_fd: int | None = None

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
        self.settings.runs_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._start_watchers()
        self._recover()
        self._sync_db(force=True)
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
                self._guarded(self._iterate)
        finally:
            self._shutdown()
        return 0

    def _done(self) -> bool:
        if not self.stopping:
            return False
        if self._forced or self.settings.on_stop == "detach":
            return True
        return not self.runs

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except Exception as exc:  # the daemon never dies of one bad pass
            log.error("loop_error", error=str(exc), error_type=type(exc).__name__, exc_info=True)
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
        self._runs_watcher = self._watcher(self.settings.runs_dir, recursive=True)
        db_path = self.settings.database_path
        if db_path is not None:
            # Other programs' commits touch the -wal file: a hint to look at the database.
            self._db_watcher = self._watcher(db_path.parent, recursive=False)

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
        self._flush_progress()
        for run in list(self.runs.values()):
            # Detach: the keeper goes on and the next daemon re-adopts the run.
            self._forget(run)
        self._probe.close()
        log.info("daemon_stopped", detached=self.settings.on_stop == "detach")

    # -- one pass -----------------------------------------------------------

    def _iterate(self) -> None:
        timeout = self._next_timeout()
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._drain_wake()
            else:
                self._on_exit(key.data)
        self._handle_signals()
        now = time.monotonic()
        changed = self._runs_watcher.drain() if self._runs_watcher else set()
        self._read_progress(self._runs_touched(changed))
        # Only runs whose log changed: a progress line cannot grow the log (and a cap check
        # per progress batch cost ~8 % of the loop at 10,000 lines/s; bench/ load scenario).
        self._bound_logs(self._runs_touched(p for p in changed if p.name == rundir.LOG_FILENAME))
        db_hint = bool(self._db_watcher.drain()) if self._db_watcher else False
        if now >= self._next_rescan:
            self._rescan()
            self._next_rescan = now + self.settings.rescan_interval_seconds
        if db_hint or now >= self._next_db_poll:
            self._sync_db(force=False)
            self._next_db_poll = now + self.settings.db_poll_interval_seconds
        self._check_deadlines()
        self._flush_progress()
        self._report_status()

    def _next_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_rescan, self._next_db_poll]
        if self.notifier.watchdog_interval:
            deadlines.append(self._next_watchdog)
        for run in self.runs.values():
            if run.exit is not None:
                deadlines.append(now + GROUP_POLL_INTERVAL_SECONDS)
            if run.timeout_at is not None and run.term_sent_at is None:
                deadlines.append(run.timeout_at)
            if run.term_sent_at is not None and not run.kill_sent:
                deadlines.append(run.term_sent_at + self.settings.cancel_grace_seconds)
        if self._claims_waiting:
            deadlines.append(now + GROUP_POLL_INTERVAL_SECONDS * 10)
        return max(0.0, min(deadlines) - now)

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
                self._request_cancel(run, "daemon stopping with on_stop=cancel")

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
            log.info(
                "config_reloaded",
                templates=sorted(kept.templates),
                max_concurrent_runs=kept.max_concurrent_runs,
            )
        self.notifier.ready(self._status_text())

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

    def _read_tail(self, run: ActiveRun, *, to_end: bool = False) -> None:
        self._progress_read.add(run.run_id)
        for record in run.tail.read_to_end() if to_end else run.tail.read():
            run.state = run.state.apply(record)

    def _flush_progress(self) -> None:
        # Only runs whose tail was read can have new progress: with 200 runs, comparing every
        # run on every pass (half the passes read nothing) cost ~2 % of a core (bench/ load).
        updates = []
        for run_id in self._progress_read:
            run = self.runs.get(run_id)
            if run is None:
                continue
            update = run.progress_update()
            if update != run.flushed:
                updates.append(update)
        if updates:
            self.store.record_progress(updates)  # if this fails, the set stays: next pass
            by_id = {u.run_id: u for u in updates}
            for run_id, update in by_id.items():
                if run_id in self.runs:
                    self.runs[run_id].flushed = update
        self._progress_read.clear()

    def _rescan(self) -> None:
        """The truth behind the hints: re-read every progress file, look at every group."""
        for run in list(self.runs.values()):
            self._read_tail(run)
        self._bound_logs(list(self.runs))
        self._settle_claims()
        self._checkpoint_if_large()
        for run in list(self.runs.values()):
            if run.exit is None and run.handle.exit_status() is not None:
                self._on_exit(run.run_id)

    def _bound_logs(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run is not None:
                self._bound_log(run.run_dir)

    def _bound_log(self, run_dir: Path) -> None:
        """Cut the middle of the run's log once it is past max_log_bytes (see logcap)."""
        try:
            cut = logcap.bound_log(rundir.log_path(run_dir), self.settings.max_log_bytes)
        except OSError as exc:
            log.warning("log_cut_failed", run_dir=str(run_dir), error=str(exc))
            return
        if cut.removed:
            log.info(
                "log_cut",
                run_dir=str(run_dir),
                removed_bytes=cut.removed,
                size_after=cut.size_after,
                method=cut.method,
            )

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

    def _sync_db(self, *, force: bool) -> None:
        # The probe forgets a change once asked: a pass that failed half-way (database busy
        # or full, a bad row) must look again next time even if nobody commits meanwhile.
        if not self._probe.changed() and not force and not self._db_unsynced:
            return
        self._db_unsynced = True
        for record in self.store.cancel_requests():
            self._on_cancel_request(record)
        if not self.stopping:
            self._launch_pending()
        counts = self.store.counts()
        self._pending_count = counts.get(RunStatus.PENDING.value, 0)
        self._db_unsynced = False

    def _on_cancel_request(self, record: RunRecord) -> None:
        run = self.runs.get(record.id)
        if run is not None:
            self._request_cancel(run, "cancel requested")
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

    def _request_cancel(self, run: ActiveRun, why: str) -> None:
        run.cancel_requested = True
        if run.term_sent_at is None and run.exit is None:
            self._terminate(run, why)

    def _terminate(self, run: ActiveRun, why: str) -> None:
        run.term_sent_at = time.monotonic()
        sent = run.handle.signal_group(signal.SIGTERM)
        log.info(
            "run_terminating", run_id=run.run_id, pgid=run.handle.record.pgid, why=why, sent=sent
        )
        crash_point("cancel_term_sent")

    def _launch_pending(self) -> None:
        free = self.settings.max_concurrent_runs - len(self.runs) - len(self._claims_waiting)
        if free <= 0:
            return
        for record in self.store.pending_runs(free):
            self._launch(record)

    def _launch(self, record: RunRecord) -> None:
        problem = self._check_row(record)
        if problem is not None:
            self._fail_unstarted(record.id, problem)
            return
        template = self.settings.templates[record.template]
        if not self.store.claim_launch(record.id):
            return  # cancelled or taken in the meantime
        crash_point("launch_claimed")
        run_dir = rundir.run_dir_for(self.settings.runs_dir, record.id)
        try:
            config_file = rundir.create_run_dir(
                run_dir, json.loads(record.config_json), template.config_format
            )
            spec = self._launch_spec(record, template, run_dir, config_file)
            handle = self.backend.launch(spec)
        except (LaunchError, OSError, SupervisorError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError):
                reason = f"cannot prepare run directory {run_dir}: {reason}"
            self._fail_unstarted(record.id, reason)
            return
        crash_point("launch_spawned")
        self._adopt_started(record, handle, run_dir, template, reason="launched")

    def _check_row(self, record: RunRecord) -> str | None:
        """Why a PENDING row some program wrote cannot be run, or None if it can."""
        if not is_valid_run_id(record.id):
            return f"invalid run id {record.id!r}: expected 12 lowercase hex characters"
        if record.template not in self.settings.templates:
            known = ", ".join(sorted(self.settings.templates))
            return f"unknown template {record.template!r} (known: {known})"
        try:
            config = json.loads(record.config_json)
        except ValueError as exc:
            return f"config_json is not valid JSON: {exc}"
        except RecursionError:
            return "config_json is not valid JSON: nested too deeply"
        if not isinstance(config, dict):
            return f"config_json must be a JSON object, got {type(config).__name__}"
        return None

    def _launch_spec(
        self, record: RunRecord, template: Template, run_dir: Path, config_file: Path
    ) -> LaunchSpec:
        progress = rundir.progress_path(run_dir)
        values = {
            "run_id": record.id,
            "run_dir": str(run_dir),
            "config_path": str(config_file),
            "progress_path": str(progress),
            "python": sys.executable,
        }
        env = scrub_environment(os.environ)
        env.update(template.env)
        env.update(
            {
                "RUNSUP_RUN_ID": record.id,
                "RUNSUP_RUN_DIR": str(run_dir),
                "RUNSUP_PROGRESS_FILE": str(progress),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return LaunchSpec(
            run_id=record.id,
            argv=template.render_command(values),
            cwd=run_dir,
            env=env,
            log_path=rundir.log_path(run_dir),
            record_dir=rundir.record_dir(run_dir),
        )

    def _fail_unstarted(self, run_id: str, reason: str) -> None:
        out = outcomes.not_started(reason)
        if self.store.transition(
            run_id,
            out.status,
            reason=out.reason,
            expect=[RunStatus.PENDING],
            values={"error_message": out.error_message, "completed_at": utcnow()},
        ):
            log.warning("run_not_started", run_id=run_id, error=reason)

    def _adopt_started(
        self,
        record: RunRecord,
        handle: RunHandle,
        run_dir: Path,
        template: Template | None,
        *,
        reason: str,
    ) -> None:
        """A PENDING run whose process now exists: record RUNNING with its pid and pgid."""
        proc = handle.record
        try:
            recorded = self._mark_running(record.id, proc, run_dir, reason)
        except Exception as exc:
            # The run is started but not recorded (database locked or full past every retry):
            # its keeper's files find it again at the next rescan, as after a crash.
            handle.close()
            self._claims_waiting[record.id] = time.monotonic()
            log.error("run_start_unrecorded", run_id=record.id, pid=proc.pid, error=str(exc))
            return
        if not recorded:
            # Only a foreign program rewriting our row gets here: do not leave a run unowned.
            log.error("run_row_changed_under_launch", run_id=record.id)
            handle.signal_group(signal.SIGKILL)
            handle.close()
            return
        log.info("run_started", run_id=record.id, pid=proc.pid, pgid=proc.pgid, how=reason)
        fresh = replace(record, status=RunStatus.RUNNING.value, started_at=utcnow())
        self._track(fresh, handle, run_dir, template)

    def _track(
        self, record: RunRecord, handle: RunHandle, run_dir: Path, template: Template | None
    ) -> ActiveRun:
        timeout = template.timeout_seconds if template else None
        timeout_at = None
        if timeout is not None:
            timeout_at = time.monotonic() + max(0.0, timeout - _run_age(record))
        state = ProgressState(
            current_erlang=record.current_erlang,
            total_erlangs=record.total_erlangs,
            current_iteration=record.current_iteration,
            total_iterations=record.total_iterations,
            erlang_index=record.erlang_index,
        )
        tail = ProgressTail(rundir.progress_path(run_dir), offset=record.progress_offset or 0)
        tail.bad_lines = record.progress_bad_lines or 0
        run = ActiveRun(
            run_id=record.id,
            run_dir=run_dir,
            handle=handle,
            tail=tail,
            state=state,
            timeout_seconds=timeout,
            timeout_at=timeout_at,
            cancel_requested=record.cancel_requested_at is not None,
            timed_out=record.timed_out_at is not None,
        )
        run.flushed = run.progress_update()
        self.runs[record.id] = run
        self.selector.register(handle.fileno(), selectors.EVENT_READ, record.id)
        self._read_tail(run)
        if run.cancel_requested or run.timed_out:
            self._terminate(run, "cancel requested" if run.cancel_requested else "timeout")
        return run

    def _forget(self, run: ActiveRun) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(run.handle.fileno())
        run.handle.close()
        self.runs.pop(run.run_id, None)

    # -- deadlines, exits, settling ------------------------------------------

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        grace = self.settings.cancel_grace_seconds
        for run in list(self.runs.values()):
            if run.exit is None and run.timeout_at is not None and now >= run.timeout_at:
                if not run.timed_out:
                    self.store.mark_timed_out(run.run_id)
                    run.timed_out = True
                if run.term_sent_at is None:
                    self._terminate(run, f"timeout after {run.timeout_seconds:g} s")
            if (
                run.term_sent_at is not None
                and not run.kill_sent
                and now >= run.term_sent_at + grace
            ):
                crash_point("cancel_escalating")
                if run.handle.group_alive():
                    run.handle.signal_group(signal.SIGKILL)
                    log.warning("run_killed", run_id=run.run_id, pgid=run.handle.record.pgid)
                run.kill_sent = True
            if run.exit is not None:
                self._try_settle(run)

    def _on_exit(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None or run.exit is not None:
            return
        status = run.handle.exit_status()
        if status is None:
            return
        run.exit = status
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(run.handle.fileno())
        log.info(
            "run_exited",
            run_id=run_id,
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
        )
        crash_point("run_exited")
        self._read_tail(run, to_end=True)
        if run.handle.group_alive() and run.term_sent_at is None:
            # The simulation is gone; children it left in its group go with it.
            self._terminate(run, "the simulation exited; stopping what it left in its group")
        self._try_settle(run)

    def _try_settle(self, run: ActiveRun) -> None:
        """Record the final status once the run's process and its whole group are gone."""
        if run.exit is None or run.handle.group_alive():
            return
        if run.outcome is None:
            self._bound_log(run.run_dir)  # the last cut: nothing writes to it any more
            run.outcome = self._classify(run, run.exit)
        self._flush_progress()
        self._settle(run, run.outcome)

    def _classify(self, run: ActiveRun, status: ExitStatus) -> Outcome:
        if status.exit_code is None and status.exit_signal is None:
            return outcomes.lost(
                "exit status unknown: the run's keeper process ended without recording it"
            )
        return outcomes.classify_exit(
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
            cancel_requested=run.cancel_requested,
            timed_out=run.timed_out,
            timeout_seconds=run.timeout_seconds,
            last_error=run.state.last_error,
            log_tail=_log_tail(run.run_dir),
        )

    def _settle(self, run: ActiveRun, out: Outcome) -> None:
        done = self.store.finish(
            run.run_id,
            out.status,
            reason=out.reason,
            exit_code=out.exit_code,
            exit_signal=out.exit_signal,
            error_message=out.error_message,
        )
        log.info(
            "run_finished",
            run_id=run.run_id,
            status=out.status.value,
            exit_code=out.exit_code,
            exit_signal=out.exit_signal,
            recorded=done,
        )
        self._forget(run)
        self.wake()  # a slot is free: look for pending runs now
        self._next_db_poll = 0.0

    # -- start-up: re-adopt what is still going, settle what ended ------------

    def _recover(self) -> None:
        for record in self.store.active_runs():
            try:
                self._recover_one(record)
            except Exception as exc:
                log.error("recover_failed", run_id=record.id, error=str(exc), exc_info=True)

    def _recover_one(self, record: RunRecord) -> None:
        if not is_valid_run_id(record.id):
            self._fail_unstarted(record.id, f"invalid run id {record.id!r}")
            return
        run_dir = Path(record.run_dir) if record.run_dir else self.settings.runs_dir / record.id
        found = self.backend.recover(
            rundir.record_dir(run_dir), _process_record(record), run_id=record.id
        )
        template = self.settings.templates.get(record.template)
        if record.status == RunStatus.PENDING:
            if not self._recover_claim(record, run_dir, found):
                return
            record = replace(record, status=RunStatus.RUNNING.value, started_at=utcnow())
        if found.handle is not None:
            run = self._track(record, found.handle, run_dir, template)
            log.info("run_adopted", run_id=record.id, pid=found.handle.record.pid)
            if found.handle.exit_status() is not None:
                self._on_exit(run.run_id)
            return
        if found.exit is not None:
            self._settle_offline(record, run_dir, template, found.exit)
            return
        out = outcomes.lost(found.lost or "exit status unknown")
        self.store.finish(record.id, out.status, reason=out.reason, error_message=out.error_message)
        log.warning("run_lost", run_id=record.id, reason=found.lost)

    def _recover_claim(self, record: RunRecord, run_dir: Path, found: Recovered) -> bool:
        """A PENDING run a dead daemon had claimed; True if it had started."""
        self._claims_waiting.pop(record.id, None)
        if found.never_started:
            # Provably never started: launching it now cannot start it twice.
            if self.store.release_claim(record.id):
                log.warning("launch_claim_released", run_id=record.id, why=found.lost)
                self._next_db_poll = 0.0
            return False
        if found.record is None:
            if found.exit is not None:
                self._fail_unstarted(
                    record.id, f"the keeper failed before the simulation ran ({found.exit})"
                )
            elif found.handle is None and found.lost and found.lost.startswith("starting"):
                self._claims_waiting[record.id] = time.monotonic()  # look again at the next rescan
            else:
                self._fail_unstarted(record.id, found.lost or "launch interrupted")
            return False
        return self._mark_running(
            record.id, found.record, run_dir, "found started after a daemon restart"
        )

    def _mark_running(self, run_id: str, proc: ProcessRecord, run_dir: Path, reason: str) -> bool:
        """PENDING -> RUNNING with the process identity a restarted daemon will need."""
        return self.store.mark_running(
            run_id,
            pid=proc.pid,
            pgid=proc.pgid,
            run_dir=str(run_dir),
            boot_id=proc.boot_id,
            pid_start_ticks=proc.start_ticks,
            keeper_pid=proc.keeper_pid,
            keeper_start_ticks=proc.keeper_start_ticks,
            reason=reason,
        )

    def _settle_offline(
        self, record: RunRecord, run_dir: Path, template: Template | None, status: ExitStatus
    ) -> None:
        """A run that ended while no daemon watched: its keeper kept the true status."""
        self._bound_log(run_dir)
        state = ProgressState()
        for rec in ProgressTail(rundir.progress_path(run_dir), offset=0).read_to_end():
            state = state.apply(rec)
        out = outcomes.classify_exit(
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
            cancel_requested=record.cancel_requested_at is not None,
            timed_out=record.timed_out_at is not None,
            timeout_seconds=template.timeout_seconds if template else None,
            last_error=state.last_error,
            log_tail=_log_tail(run_dir),
        )
        self.store.finish(
            record.id,
            out.status,
            reason=f"{out.reason} (while the daemon was away)",
            exit_code=out.exit_code,
            exit_signal=out.exit_signal,
            error_message=out.error_message,
        )
        log.info("run_settled_offline", run_id=record.id, status=out.status.value)

    def _settle_claims(self) -> None:
        """Claims whose keeper was still starting at the last look: look again."""
        for run_id in list(self._claims_waiting):
            record = self.store.find(run_id)
            if record is None or record.status != RunStatus.PENDING:
                self._claims_waiting.pop(run_id, None)
                continue
            self._recover_one(record)

    # -- systemd status -------------------------------------------------------

    def _status_text(self) -> str:
        text = f"{len(self.runs)} running, {self._pending_count} pending"
        for watcher in (self._runs_watcher, self._db_watcher):
            if watcher is not None and watcher.failed is not None:
                # Progress then arrives only with each rescan: the operator should know why.
                return f"{text}; file watching down, rescanning ({watcher.failed})"
        return text

    def _report_status(self) -> None:
        text = self._status_text()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = time.monotonic() + interval


def _process_record(record: RunRecord) -> ProcessRecord | None:
    if (
        record.pid is None
        or record.pgid is None
        or record.pid_start_ticks is None
        or record.boot_id is None
        or record.keeper_pid is None
        or record.keeper_start_ticks is None
    ):
        return None
    return ProcessRecord(
        pid=record.pid,
        pgid=record.pgid,
        start_ticks=record.pid_start_ticks,
        boot_id=record.boot_id,
        keeper_pid=record.keeper_pid,
        keeper_start_ticks=record.keeper_start_ticks,
    )


def _run_age(record: RunRecord) -> float:
    """Seconds the run has been going: by the kernel's boot clock from its process's start time
    when known (an adopted run; immune to wall-clock jumps), else by started_at."""
    if record.pid_start_ticks is not None and record.boot_id == current_boot_id():
        with contextlib.suppress(OSError, ValueError):
            return max(0.0, process_age_seconds(record.pid_start_ticks))
    started = record.started_at or utcnow()
    return max(0.0, (utcnow() - started).total_seconds())


def _log_tail(run_dir: Path) -> str | None:
    path = rundir.log_path(run_dir)
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return None
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-outcomes.LOG_TAIL_LINES :]) or None


def run_daemon(settings: Settings, *, config_file: str | None = None) -> int:
    """Open the database (upgrading its schema) and serve until SIGTERM or SIGINT."""
    # Nothing the daemon, a keeper or a simulation creates is writable by group or others,
    # nor open to others, whatever umask we were started with (a stricter one is kept).
    os.umask(os.umask(UMASK_FLOOR) | UMASK_FLOOR)
    path = settings.database_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database_url)
    try:
        return Daemon(settings, store, config_file=config_file).run()
    finally:
        store.close()
