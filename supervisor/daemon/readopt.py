"""At start, and for claims still starting: find each run the daemon is responsible for again
and carry out what recovery.py decides for it. Owns the claims that wait for another look."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import structlog

from supervisor import outcome as outcomes
from supervisor import rundir
from supervisor.daemon import launchprep, recovery
from supervisor.daemon.foreign import ForeignRuns
from supervisor.daemon.launcher import Launcher
from supervisor.daemon.progressfeed import ProgressFeed
from supervisor.daemon.resources import Held
from supervisor.daemon.runstate import StopCause
from supervisor.daemon.services import Services
from supervisor.daemon.supervision import Supervision
from supervisor.daemon.tracked import log_tail, read_on, record_dir_of, running, stop_cause
from supervisor.db import RunRecord, claim_released_change, final_change, standin_change
from supervisor.executors.base import ExitStatus, Launch, ProcessRecord, RunHandle, RunRef
from supervisor.executors.local.identity import current_boot_id
from supervisor.queue.rules import attempt_number
from supervisor.settings import LOCAL_EXECUTOR
from supervisor.states import RunStatus

log = structlog.get_logger(__name__)

# A claim whose keeper was still starting at the last look is looked at again this often.
CLAIM_RECHECK_SECONDS = 0.5


class Readoption:
    """Recovery of the runs an earlier daemon left, and the claims found still starting."""

    def __init__(
        self,
        services: Services,
        supervision: Supervision,
        launcher: Launcher,
        foreign: ForeignRuns,
        feed: ProgressFeed,
    ) -> None:
        self._s = services
        self._sup = supervision
        self._launcher = launcher
        self._foreign = foreign
        self._feed = feed
        self._claims_waiting: dict[str, float] = {}  # run id -> monotonic time to look again
        self._claims_held: dict[str, Held] = {}  # what those claims hold, from their rows
        self._claims_executor: dict[str, str] = {}  # where each waiting claim was sent

    @property
    def claims_held(self) -> dict[str, Held]:
        """What the local claims still starting hold (they count against the slots)."""
        return self._claims_held

    def claims_on(self, executor: str) -> int:
        """How many waiting claims were sent to this executor (they count against its
        max_submitted as its launches do)."""
        return sum(name == executor for name in self._claims_executor.values())

    def next_deadline(self) -> float | None:
        """When the next waiting claim is looked at again, if any waits."""
        return min(self._claims_waiting.values()) if self._claims_waiting else None

    def check_claims(self, now: float) -> None:
        """Look again at the claims whose time has come."""
        for run_id, due in list(self._claims_waiting.items()):
            if now >= due:
                self._recheck_claim(run_id)

    def recover(self) -> None:
        """Find every run an earlier daemon was responsible for and take it on again."""
        store = self._s.store
        found = store.active_runs() + store.overturned_runs(current_boot_id())
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
            self._foreign.adopt(record)
            return
        name = record.executor or LOCAL_EXECUTOR
        executor = self._s.executors.get(name)
        if executor is None:
            # Its job was sent where this configuration no longer reaches: leave the row as
            # it is (the job may still run) and say so at every start.
            log.error("run_executor_missing", run_id=record.id, executor=name)
            return
        run_dir = record_dir_of(record, self._launcher.runs_dir(name))
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
        recovery.carry_out(_RunHost(self, run_dir), record, executor.recover(ref))

    def _settle_invalid(self, record: RunRecord, why: str) -> None:
        if record.status == RunStatus.PENDING:
            self._launcher.fail_unstarted(record.id, why)
        else:
            out = outcomes.lost(why)
            self._s.outbox.add(
                final_change(record.id, out.status, reason=out.reason, error_message=why)
            )

    def _recheck_claim(self, run_id: str) -> None:
        """A claim whose keeper was still starting at the last look: look again. A look that
        fails keeps the claim (and what it holds) for the next look."""
        try:
            record = self._s.store.find(run_id)
        except Exception as exc:
            self._recheck_failed(run_id, exc)
            return
        self._drop_claim(run_id)
        if record is None or record.status != RunStatus.PENDING:
            return
        try:
            self._recover_one(record)
        except Exception as exc:
            self._recheck_failed(run_id, exc)
            self.look_again_later(record, f"the last look failed: {exc}")

    def _recheck_failed(self, run_id: str, exc: Exception) -> None:
        log.error("claim_recheck_failed", run_id=run_id, error=str(exc), exc_info=True)
        if run_id in self._claims_waiting:
            self._claims_waiting[run_id] = self._s.clock.monotonic() + CLAIM_RECHECK_SECONDS

    def _drop_claim(self, run_id: str) -> None:
        self._claims_waiting.pop(run_id, None)
        self._claims_held.pop(run_id, None)
        self._claims_executor.pop(run_id, None)

    def settle_offline(self, record: RunRecord, run_dir: Path, status: ExitStatus) -> None:
        """A run that ended while no daemon watched: its keeper kept the true status.

        Its progress is read on from where the last daemon stopped (not from the start), and
        the final progress is committed with the final status.
        """
        template = self._s.settings.templates.get(record.template)
        state, update = read_on(record, run_dir, template)  # before the last log cut
        self._feed.bound_log(run_dir, record.executor or LOCAL_EXECUTOR)
        self._s.outbox.progress(update)
        cause = stop_cause(record)
        code = template.checkpoint_exit_code if template else None
        if code is not None and cause is None and status.known and status.exit_code == code:
            out = outcomes.checkpointed(code)  # SPEC section 15: it goes on at once
            self._sup.settle(record.id, out, reason=f"{out.reason} (while the daemon was away)")
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
        self._sup.settle(record.id, out, reason=f"{out.reason} (while the daemon was away)")
        log.info("run_settled_offline", run_id=record.id, status=out.status.value)

    # -- what recovery decides, carried out (recovery.RecoveryHost, through _RunHost) --------

    def mark_running(
        self, record: RunRecord, process: ProcessRecord, reason: str, run_dir: Path
    ) -> None:
        """PENDING -> RUNNING for a claim found started; retried until committed."""
        change = running(record.id, process, run_dir, reason)
        self._s.outbox.add(change, lambda ok: self._sup.running_recorded(record.id, ok))

    def track(self, record: RunRecord, handle: RunHandle, run_dir: Path) -> None:
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
        template = self._s.settings.templates.get(record.template)
        held = None
        if (record.executor or LOCAL_EXECUTOR) == LOCAL_EXECUTOR:
            held = self._launcher.resources.held_by_adopted(record, handle.record.keeper_pid)
        run = self._sup.track(record, handle, run_dir, template, held=held)
        if handle.exit_status() is not None:
            self._sup.on_exit(run.run_id)

    def record_process(self, record: RunRecord, process: ProcessRecord) -> None:
        """The row names the run's new process group (a cluster job's new stand-in)."""
        self._s.outbox.add(standin_change(record.id, process))
        log.info("run_process_changed", run_id=record.id, pid=process.pid)

    def settle_lost(self, record: RunRecord, why: str) -> None:
        """FAILED: exit status unknown."""
        out = outcomes.lost(why)
        self._sup.settle(record.id, out, reason=out.reason)
        log.warning("run_lost", run_id=record.id, reason=why)

    def fail_unstarted(self, record: RunRecord, why: str) -> None:
        """PENDING -> FAILED."""
        self._launcher.fail_unstarted(record.id, why)

    def release_claim(self, record: RunRecord, why: str) -> None:
        """Nothing started: launch it again."""
        self._s.outbox.add(claim_released_change(record.id))
        self._s.poll_db_soon()
        log.warning("launch_claim_released", run_id=record.id, why=why)

    def resume_launch(self, record: RunRecord, launch: Launch, run_dir: Path) -> None:
        """Its job is still queued: an in-flight launch again, its id already in the row."""
        self._launcher.resume(record, launch, run_dir)

    def look_again_later(self, record: RunRecord, why: str) -> None:
        """Its keeper is still starting."""
        self._claims_waiting[record.id] = self._s.clock.monotonic() + CLAIM_RECHECK_SECONDS
        name = record.executor or LOCAL_EXECUTOR
        self._claims_executor[record.id] = name
        if name == LOCAL_EXECUTOR:  # a cluster holds its own resources
            self._claims_held[record.id] = Held.of_row(record)
        log.info("launch_still_starting", run_id=record.id, why=why)


class _RunHost:
    """recovery.RecoveryHost for one run: Readoption's answers, with the run's directory."""

    def __init__(self, owner: Readoption, run_dir: Path) -> None:
        self._o = owner
        self._run_dir = run_dir

    def mark_running(self, record: RunRecord, process: ProcessRecord, reason: str) -> None:
        """PENDING -> RUNNING for a claim found started."""
        self._o.mark_running(record, process, reason, self._run_dir)

    def track(self, record: RunRecord, handle: RunHandle) -> None:
        """Watch the run from now on."""
        self._o.track(record, handle, self._run_dir)

    def record_process(self, record: RunRecord, process: ProcessRecord) -> None:
        """The row names the run's new process group."""
        self._o.record_process(record, process)

    def settle_offline(self, record: RunRecord, status: ExitStatus) -> None:
        """Settle with the status the keeper kept."""
        self._o.settle_offline(record, self._run_dir, status)

    def settle_lost(self, record: RunRecord, why: str) -> None:
        """FAILED: exit status unknown."""
        self._o.settle_lost(record, why)

    def fail_unstarted(self, record: RunRecord, why: str) -> None:
        """PENDING -> FAILED."""
        self._o.fail_unstarted(record, why)

    def release_claim(self, record: RunRecord, why: str) -> None:
        """Nothing started: launch it again."""
        self._o.release_claim(record, why)

    def resume_launch(self, record: RunRecord, launch: Launch) -> None:
        """Its job is still queued."""
        self._o.resume_launch(record, launch, self._run_dir)

    def look_again_later(self, record: RunRecord, why: str) -> None:
        """Its keeper is still starting."""
        self._o.look_again_later(record, why)
