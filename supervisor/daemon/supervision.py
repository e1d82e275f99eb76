"""The runs the loop is responsible for, from their start until their final status is committed:
tracking, the state machine's actions, deadlines, exits, lingering groups, settling, retries and
corrections. Owns the table of tracked runs and what is being settled."""

from __future__ import annotations

import contextlib
import selectors
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from supervisor import outcome as outcomes
from supervisor.daemon import checkpoints
from supervisor.daemon.progressfeed import ProgressFeed
from supervisor.daemon.resources import Held
from supervisor.daemon.runstate import CHECKPOINT_WHY, MarkTimedOut, Phase, RunState, SendSignal
from supervisor.daemon.services import Services
from supervisor.daemon.tracked import (
    InFlight,
    TrackedRun,
    log_tail,
    progress_of,
    running,
    stop_cause,
    tails_for,
)
from supervisor.daemon.wakeups import _EXIT, _LEFTOVER, crash_point
from supervisor.db import (
    RowChange,
    RunRecord,
    corrected_final_change,
    final_change,
    timed_out_change,
)
from supervisor.executors.base import ExitStatus, RunHandle
from supervisor.executors.local.identity import current_boot_id, process_age_seconds
from supervisor.outcome import Outcome
from supervisor.queue.rules import attempt_number
from supervisor.settings import LOCAL_EXECUTOR, Template
from supervisor.states import RunStatus

log = structlog.get_logger(__name__)

# The queue's retry decision: the next attempt's row change, or None when the outcome is final.
RetryDecision = Callable[[str, Outcome, str], RowChange | None]


class Supervision:
    """Tracks runs and settles them; owns `runs` and what is being settled."""

    def __init__(
        self,
        services: Services,
        feed: ProgressFeed,
        retry: RetryDecision,
        runs: dict[str, TrackedRun],
    ) -> None:
        self._s = services
        self._feed = feed
        self._retry = retry
        # Handed over empty (the feed was given it to read); only this object writes it.
        self.runs = runs
        self._settling: set[str] = set()  # final status queued in the outbox, not yet committed
        self._cancel_seen: set[str] = set()  # cancels asked while the run was still launching

    def knows(self, run_id: str) -> bool:
        """True if the run is tracked or its final status is on its way."""
        return run_id in self.runs or run_id in self._settling

    def cancel_when_started(self, run_id: str) -> None:
        """A cancel came while the run was still launching: act on it once it reports."""
        self._cancel_seen.add(run_id)

    def launch_dropped(self, run_id: str) -> None:
        """The launch ended without a process (failed, removed, abandoned): no cancel to act on."""
        self._cancel_seen.discard(run_id)

    def cancels_waiting(self) -> int:
        """How many cancels wait for their launch to report."""
        return len(self._cancel_seen)

    def started(self, flight: InFlight, handle: RunHandle) -> None:
        """A launch reported its process: RUNNING (with pid and pgid) goes out with this pass."""
        record = flight.record
        proc = handle.record
        change = running(record.id, proc, flight.run_dir, "launched")
        self._s.outbox.add(change, lambda applied: self.running_recorded(record.id, applied))
        log.info(
            "run_started",
            run_id=record.id,
            pid=proc.pid,
            pgid=proc.pgid,
            keeper_pid=proc.keeper_pid,
            external_id=proc.external_id,
        )
        fresh = replace(record, status=RunStatus.RUNNING.value, started_at=self._s.clock.utcnow())
        run = self.track(
            fresh,
            handle,
            flight.run_dir,
            flight.template,
            held=flight.held,
            executor=flight.executor,
        )
        if record.id in self._cancel_seen:
            self._cancel_seen.discard(record.id)
            self.request_cancel(run)

    def running_recorded(self, run_id: str, applied: bool) -> None:
        """The RUNNING write's result: refused means another program rewrote our row."""
        if applied:
            return
        # Only a foreign program rewriting our row gets here: do not leave a run unowned.
        run = self.runs.get(run_id)
        log.error("run_row_changed_under_launch", run_id=run_id)
        if run is not None:
            # Followed until its group is gone (then its cgroup goes too), never settled.
            run.disowned = True
            run.handle.signal_group(signal.SIGKILL)
            if run.state.exit is None:
                self.on_exit(run_id)
            else:
                self.check_group(run_id)

    def track(
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
        """Watch the run from now on: its end, its deadlines, its progress."""
        # A run another program started keeps to that program's limits, not our template's
        # (SPEC section 3: never stopped while its group lives, unless a cancel is asked).
        timeout = template.timeout_seconds if template and not foreign else None
        now = self._s.clock.monotonic()
        timeout_at = None
        if timeout is not None:
            timeout_at = now + max(0.0, timeout - self.run_age(record))
        where = self._s.executors.get(executor or record.executor or LOCAL_EXECUTOR)
        warn_at, warn_signal = checkpoints.warning_at(
            template, timeout_at, sent_by_executor=where is None or where.signals_checkpoints
        )
        state = RunState(
            grace_seconds=self._s.settings.cancel_grace_seconds,
            timeout_at=timeout_at,
            cause=stop_cause(record),
            stop_leftovers=not foreign,
            checkpoint_at=warn_at,
            checkpoint_signal=warn_signal,
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
            self._s.selector.register(fd, selectors.EVENT_READ, (_EXIT, record.id))
            run.exit_fd = fd
        self._feed.read_tail(run)
        self.act(run, state.start(now))
        return run

    def forget(self, run: TrackedRun) -> None:
        """Stop watching the run (settled, or left running on the way out)."""
        self._unwatch_exit(run)
        self._unwatch_leftover(run)
        run.handle.close()
        self.runs.pop(run.run_id, None)

    def _unwatch_exit(self, run: TrackedRun) -> None:
        if run.exit_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._s.selector.unregister(run.exit_fd)
            run.exit_fd = None

    def _unwatch_leftover(self, run: TrackedRun) -> None:
        if run.leftover_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._s.selector.unregister(run.leftover_fd)
            run.leftover_fd = None

    def act(self, run: TrackedRun, actions: list[SendSignal | MarkTimedOut]) -> None:
        """Carry out what the run's state machine decided."""
        for action in actions:
            if isinstance(action, MarkTimedOut):
                self._s.outbox.add(timed_out_change(run.run_id))
                continue
            if action.signal == signal.SIGKILL:
                crash_point("cancel_escalating")
                if run.handle.group_alive():
                    run.handle.signal_group(signal.SIGKILL)
                    log.warning("run_killed", run_id=run.run_id, pgid=run.handle.record.pgid)
                if run.state.exit is not None:  # else the run's end wakes the loop
                    self._schedule_group_check(run)  # the handle's delay starts again
                continue
            sent = run.handle.signal_group(action.signal)
            if action.why == CHECKPOINT_WHY:  # a warning: the run goes on
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

    def request_cancel(self, run: TrackedRun) -> None:
        """Begin stopping the run because a cancel was asked for."""
        self.act(run, run.state.request_cancel(self._s.clock.monotonic()))

    def check_deadlines(self, now: float) -> None:
        """Timeouts, grace periods and lingering groups whose time has come."""
        for run in list(self.runs.values()):
            self.act(run, run.state.tick(now))
            if run.group_check_at is not None and now >= run.group_check_at:
                run.group_check_at = None  # _try_settle schedules the next look if needed
                self.check_group(run.run_id)

    def on_exit(self, run_id: str) -> None:
        """The run's process may have ended: read it out, settle once its group is gone."""
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
        self._feed.read_tail(run, to_end=True)
        alive = run.handle.group_alive()
        self.act(run, run.state.on_exit(status, self._s.clock.monotonic(), group_alive=alive))
        self._try_settle(run, group_alive=alive)

    def check_group(self, run_id: str) -> None:
        """Look whether an exited run's group is gone yet."""
        run = self.runs.get(run_id)
        if run is not None and run.state.exit is not None:
            self._try_settle(run, group_alive=run.handle.group_alive())

    def rescan(self) -> None:
        """The truth behind the hints: re-read every progress file, look at every run."""
        for run in list(self.runs.values()):
            self._feed.read_tail(run)
        self._feed.bound_logs(list(self.runs))
        self._feed.checkpoint_if_large()
        for run in list(self.runs.values()):
            if run.state.exit is None:
                self.on_exit(run.run_id)

    def _schedule_group_check(self, run: TrackedRun) -> None:
        """Look at a lingering group again when the handle says: its fd (the leftover it
        watches ended) or its delay (which grows while the group lingers), whichever is first."""
        self._unwatch_leftover(run)
        fd = run.handle.leftover_fileno()
        if fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._s.selector.register(fd, selectors.EVENT_READ, (_LEFTOVER, run.run_id))
                run.leftover_fd = fd
        run.group_check_at = self._s.clock.monotonic() + run.handle.group_check_delay()

    def _try_settle(self, run: TrackedRun, *, group_alive: bool) -> None:
        """Decide the run's final status once its process and its whole group are gone."""
        if run.state.exit is None or run.state.phase in (Phase.EXITED, Phase.SETTLED):
            return
        if group_alive:
            self._schedule_group_check(run)
            return
        self._unwatch_leftover(run)
        run.group_check_at = None
        if run.disowned:  # the row is another program's now: nothing of ours to write
            run.handle.release()
            self.forget(run)
            return
        run.state.group_gone()
        self._feed.bound_log(run.run_dir, run.executor)  # the last cut: nothing writes to it
        out = self._classify(run, run.state.exit)
        self._feed.mark_read(run.run_id)
        self._feed.queue_progress()
        self.settle(run.run_id, out, reason=out.reason, peak=run.state.exit.peak_memory_bytes)

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
        checkpointed = checkpoints.checkpointed(run.template, run.state, status)
        if checkpointed is not None:
            return checkpointed
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

    def settle(self, run_id: str, out: Outcome, *, reason: str, peak: int | None = None) -> None:
        """Write the run's outcome: its next attempt if it has one, else its final status."""
        retry = self._retry(run_id, out, reason)  # its next attempt, if it has one
        if retry is None and out.kind == outcomes.CHECKPOINTED:
            out = checkpoints.as_plain_exit(out)  # it cannot go on: the exit it was
            reason = out.reason
            retry = self._retry(run_id, out, reason)
        if retry is not None:
            self._s.outbox.add(
                retry, lambda applied: self._retried(run_id, out, reason, applied, peak)
            )
            return
        self._settle_final(run_id, out, reason=reason, peak=peak)

    def _retried(
        self, run_id: str, out: Outcome, reason: str, applied: bool, peak: int | None
    ) -> None:
        if not applied:  # the row left RUNNING under us: settle it as any other run
            out = checkpoints.as_plain_exit(out)
            self._settle_final(run_id, out, reason=out.reason, peak=peak)
            return
        log.info("run_retry_queued", run_id=run_id)
        run = self.runs.get(run_id)
        crash_point(f"retry_committed:{run.attempt if run is not None else 0}")
        if run is not None:
            run.state.settled()
            run.handle.release()
            self.forget(run)
        self._s.wake()
        self._s.poll_db_soon()

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
        self.settle_with(run_id, change, out)

    def settle_with(self, run_id: str, change: RowChange, out: Outcome) -> None:
        """Queue this final change for the run; it counts as settling until committed."""
        self._settling.add(run_id)
        self._s.outbox.add(change, lambda applied: self._settled(run_id, out, applied))

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
            self.forget(run)
        self._s.wake()  # a slot is free: look for pending runs now
        self._s.poll_db_soon()

    def _correct(self, run_id: str, out: Outcome) -> bool:
        """Our final write was refused: if another program wrote a final status over the run
        while it still lived, write the true outcome over it (SPEC section 3). True if queued."""
        record = self._s.store.find(run_id)
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
        self._s.outbox.add(change, lambda applied: self._settled(run_id, out, True))
        return True

    def run_age(self, record: RunRecord) -> float:
        """Seconds the run has been going: by the kernel's boot clock from its process's start
        time when known (an adopted run; immune to wall-clock jumps), else by started_at."""
        if record.pid_start_ticks is not None and record.boot_id == current_boot_id():
            with contextlib.suppress(OSError, ValueError):
                return max(0.0, process_age_seconds(record.pid_start_ticks))
        now = self._s.clock.utcnow()
        started = record.started_at or now
        return max(0.0, (now - started).total_seconds())
