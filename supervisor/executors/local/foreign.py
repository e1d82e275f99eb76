"""Runs another program started (SPEC section 3): a RUNNING row whose pid and pgid are not ours.

Such a run has no keeper, so its exit status is unknown; what the daemon can do is watch its
process group, signal it on a cancel, and notice when every process of it has exited. A pid
written by another program may already belong to an unrelated process (the run ended, the pid
was reused): a process is taken for the run's only if it is in the row's group and started no
later than the row says the run did (plus a tolerance for clock granularity), so a process born
after the run started is never signalled.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import structlog

from supervisor.executors.base import UNKNOWN_EXIT, ExitStatus, ProcessIdentity, ProcessRecord
from supervisor.executors.local.groupwatch import GroupWatch
from supervisor.executors.local.handle import LocalRunHandle
from supervisor.executors.local.identity import (
    EXITED_STATES,
    Stat,
    current_boot_id,
    is_same_process,
    live_group_member,
    open_pidfd,
    read_stat,
)
from supervisor.executors.local.keeperwatch import KeeperWatch
from supervisor.executors.local.means import KernelMeans

log = structlog.get_logger(__name__)

# A process counts as the run's only if it started at most this long after the row's
# started_at: the other program writes RUNNING a few ms after it started the process, and
# /proc's start time has a granularity of one clock tick.
START_TOLERANCE_SECONDS = 2.0


def boot_time() -> float:
    """The wall-clock time the machine booted (seconds since the epoch), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def started_at_wall(stat: Stat) -> float:
    """When a process started, as wall-clock seconds since the epoch."""
    return boot_time() + stat.start_ticks / os.sysconf("SC_CLK_TCK")


def find_foreign(
    pid: int | None, pgid: int | None, *, started_at: datetime | None, start_ticks: int | None
) -> Stat | None:
    """The live process that stands for a foreign run's group, or None if nothing of it lives.

    `start_ticks` (recorded when the daemon first adopted the run) names the leader exactly;
    otherwise the leader or any member must have started before `started_at` + tolerance;
    with no `started_at`, only the leader the row names counts.
    """
    if pgid is None or pgid <= 0:
        return None
    latest = None if started_at is None else started_at.timestamp() + START_TOLERANCE_SECONDS
    leader = read_stat(pid) if pid is not None and pid > 0 else None
    if leader is not None and leader.state not in EXITED_STATES and leader.pgrp == pgid:
        if start_ticks is not None and leader.start_ticks == start_ticks:
            return leader
        if start_ticks is None and (latest is None or started_at_wall(leader) <= latest):
            return leader
    if latest is None:
        # Nothing tells when the run started: any other member of a group whose number was
        # reused since would be taken for the run's (and signalled). Only the process the row
        # names stands for it (issue 20, 8).
        return None
    member = live_group_member(pgid)
    if member is None or started_at_wall(member) > latest:
        return None  # nothing left, or born after the run started: not the run's
    return member


class ForeignRunHandle(LocalRunHandle):
    """A foreign run's group, watched through the process that stands for it (its pidfd, or
    a timer where there are no pidfds).

    It "exits" (exit status unknown) when that process ends; the loop then waits until no
    process of the group is left before it settles the run.
    """

    def exit_status(self) -> ExitStatus | None:
        """None while the watched process lives; then UNKNOWN_EXIT (no keeper recorded it)."""
        self._check_open()
        if self._status is None and self.keeper.ended():
            self._status = UNKNOWN_EXIT
            log.info("foreign_process_ended", run_id=self.run_id, pid=self.record.pid)
        return self._status


def adopt_foreign(
    run_id: str,
    *,
    pid: int | None,
    pgid: int | None,
    started_at: datetime | None,
    start_ticks: int | None,
    record_dir: Path,
    means: KernelMeans,
) -> ForeignRunHandle | None:
    """A handle on a RUNNING row another program started, or None if nothing of it lives."""
    found = find_foreign(pid, pgid, started_at=started_at, start_ticks=start_ticks)
    if found is None or pgid is None:
        return None
    boot_id = current_boot_id()
    record = ProcessRecord(
        pid=found.pid,
        pgid=pgid,
        start_ticks=found.start_ticks,
        boot_id=boot_id,
        keeper_pid=0,  # no keeper: another program started it
        keeper_start_ticks=0,
    )
    identity = ProcessIdentity(found.pid, found.start_ticks, boot_id)
    if means.pidfds:
        watch_fd = open_pidfd(identity, zombie_ok=False)
        if watch_fd is None:
            return None
        keeper = KeeperWatch(identity, pidfd=watch_fd)
    elif is_same_process(identity):
        keeper = KeeperWatch(identity)  # looked at on the executor's timer
    else:
        return None
    is_leader = found.pid == pgid
    leader_fd = open_pidfd(identity, zombie_ok=True) if is_leader and means.pidfds else None
    # A member counts as the run's only if born no later than the row's start allows (see
    # find_foreign): a process born after the run started is never signalled.
    latest = None if started_at is None else _ticks_at(started_at.timestamp())
    group = GroupWatch(
        pgid,
        boot_id,
        means=means,
        leader=identity if is_leader else None,
        leader_pidfd=leader_fd,
        latest_ticks=latest,
        run_id=run_id,
    )
    log.info("foreign_run_adopted", run_id=run_id, pid=found.pid, pgid=pgid)
    return ForeignRunHandle(
        record, record_dir=record_dir, run_id=run_id, keeper=keeper, group=group
    )


def _ticks_at(wall: float) -> int:
    """The start time (clock ticks since boot) of a process started at `wall` + tolerance."""
    return int((wall + START_TOLERANCE_SECONDS - boot_time()) * os.sysconf("SC_CLK_TCK"))
