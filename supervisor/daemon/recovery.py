"""At start (and for claims still starting): find each run the daemon is responsible for again.

The executor looks and answers with one case (executors/base.py: Adopted, EndedWhileAway,
Queued, StillStarting, NeverStarted, FailedToStart, Lost); this module decides what each case
means for the run's row, which is either RUNNING (the daemon had recorded the start) or PENDING
with a launch claim (a daemon died between claiming and recording RUNNING). The loop carries the
decisions out through `RecoveryHost`, so the decisions are tested with a fake host.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from supervisor.db import RunRecord
from supervisor.executors.base import (
    Adopted,
    EndedWhileAway,
    ExitStatus,
    FailedToStart,
    Launch,
    Lost,
    NeverStarted,
    ProcessRecord,
    Queued,
    Recovery,
    RunHandle,
    StillStarting,
)
from supervisor.states import RunStatus

log = structlog.get_logger(__name__)


class RecoveryHost(Protocol):
    """What the loop does for the decisions taken here."""

    def mark_running(self, record: RunRecord, process: ProcessRecord, reason: str) -> None:
        """Record PENDING -> RUNNING with this process (a claim that had started)."""
        ...

    def track(self, record: RunRecord, handle: RunHandle) -> None:
        """Watch the run from now on (also a leftover group of a lost run)."""
        ...

    def record_process(self, record: RunRecord, process: ProcessRecord) -> None:
        """A RUNNING row's process changed (a cluster job's stand-in made again)."""
        ...

    def settle_offline(self, record: RunRecord, status: ExitStatus) -> None:
        """Settle a run that ended while no daemon watched, with its final progress."""
        ...

    def settle_lost(self, record: RunRecord, why: str) -> None:
        """FAILED: how the run ended cannot be known."""
        ...

    def fail_unstarted(self, record: RunRecord, why: str) -> None:
        """PENDING -> FAILED: the run could not be started."""
        ...

    def release_claim(self, record: RunRecord, why: str) -> None:
        """Give the claim back: nothing was started, so it may be launched again."""
        ...

    def look_again_later(self, record: RunRecord, why: str) -> None:
        """A launch still under way: decide at the next look."""
        ...

    def resume_launch(self, record: RunRecord, launch: Launch) -> None:
        """A submitted run still waiting to start (a queued cluster job): wait for it again."""
        ...


def carry_out(host: RecoveryHost, record: RunRecord, found: Recovery) -> None:
    """Carry out what `found` means for a run whose row is `record`."""
    if record.status == RunStatus.PENDING:
        _carry_out_claim(host, record, found)
    else:
        _carry_out_running(host, record, found)


def _carry_out_running(host: RecoveryHost, record: RunRecord, found: Recovery) -> None:
    """The row says RUNNING: watch the run, or settle it with what is known of its end."""
    match found:
        case Adopted(handle=handle):
            if record.pid is not None and handle.record.pid != record.pid:
                host.record_process(record, handle.record)
            host.track(record, handle)
            log.info("run_adopted", run_id=record.id, pid=handle.record.pid)
        case EndedWhileAway(leftover=leftover) if leftover is not None:
            # Its status is known, but processes of its group live on: they are stopped
            # (SIGTERM, SIGKILL after the grace) before the run is settled with that status.
            host.track(record, leftover)
            log.warning("run_ended_while_away", run_id=record.id, group_left=True)
        case EndedWhileAway(exit=status):
            host.settle_offline(record, status)
        case Lost(why=why, leftover=leftover) if leftover is not None:
            host.track(record, leftover)  # its exit reads as unknown once the group is gone
            log.warning("run_lost", run_id=record.id, why=why, group_left=True)
        case Lost(why=why) | StillStarting(why=why) | NeverStarted(why=why):
            host.settle_lost(record, why)
        case FailedToStart(why=why):
            host.settle_lost(record, why)
        case Queued(launch=launch):
            # A RUNNING row whose job waits again (a cluster requeued it): no start to record.
            launch.abandon()
            host.settle_lost(record, "the cluster queued the job again after it had started")


def _carry_out_claim(host: RecoveryHost, record: RunRecord, found: Recovery) -> None:
    """The row is PENDING with a launch claim: a daemon died between claim and RUNNING."""
    match found:
        case NeverStarted(why=why):
            host.release_claim(record, why)
        case FailedToStart(why=why):
            host.fail_unstarted(record, why)
        case StillStarting(why=why):
            host.look_again_later(record, why)
        case Queued(launch=launch):
            host.resume_launch(record, launch)
        case Adopted(handle=handle):
            host.mark_running(record, handle.record, "found started after a daemon restart")
            _carry_out_running(host, record, found)
        case EndedWhileAway(record=process) | Lost(record=process) if process is not None:
            host.mark_running(record, process, "found started after a daemon restart")
            _carry_out_running(host, record, found)
        case EndedWhileAway(exit=status):
            host.fail_unstarted(record, f"the launch ended unrecorded ({status.describe()})")
        case Lost(why=why):
            host.fail_unstarted(record, why)


def process_of(record: RunRecord) -> ProcessRecord | None:
    """The process identity stored in the row, if all of it is there."""
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
