"""A run on this machine as the loop holds it: pidfds of its keeper and of its simulation."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import structlog

from supervisor.executors.base import UNKNOWN_EXIT, ExitStatus, ProcessIdentity, ProcessRecord
from supervisor.executors.local import cgroups
from supervisor.executors.local.identity import (
    EXITED_STATES,
    Stat,
    leader_is_ours,
    live_group_member,
    open_pidfd,
    pidfd_group_signal,
    read_stat,
    readable,
    reap,
)
from supervisor.executors.local.keeper import decode_shell_status, read_exit_file
from supervisor.signames import signal_name

log = structlog.get_logger(__name__)


def _populated(cgroup: cgroups.RunCgroup) -> bool:
    try:
        return cgroups.populated(cgroup)
    except OSError:
        return False


class LocalRunHandle:
    """A run on this machine, watched through a pidfd of its keeper."""

    def __init__(
        self,
        record: ProcessRecord,
        *,
        record_dir: Path,
        run_id: str | None,
        keeper_pidfd: int | None,
        sim_pidfd: int | None,
    ) -> None:
        """Take ownership of the pidfds; keeper_pidfd None: the keeper is already gone."""
        self.record = record
        self.run_id = run_id
        self._record_dir = record_dir
        self._keeper_gone_at_start = keeper_pidfd is None
        # A keeper already gone: an eventfd holding 1 is a descriptor that is always readable.
        self._fd: int | None = keeper_pidfd if keeper_pidfd is not None else os.eventfd(1)
        self._sim_pidfd = sim_pidfd
        self._status: ExitStatus | None = None
        self.cgroup: cgroups.RunCgroup | None = None  # its memory cap, when it has one
        self._member: Stat | None = None  # a live process of the group, found by group_alive()
        self._member_fd: int | None = None

    def __enter__(self) -> LocalRunHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("the run handle is closed")
        return self._fd

    def fileno(self) -> int:
        """Readable once the run's keeper (hence the simulation) has ended."""
        return self._open_fd()

    def exit_status(self) -> ExitStatus | None:
        """None while the keeper runs; then what it recorded, or UNKNOWN_EXIT if it was killed."""
        if self._status is not None:
            return self._status
        fd = self._open_fd()
        reaped = None
        if not self._keeper_gone_at_start:
            if not readable(fd, 0):
                return None
            reaped = reap(fd)  # our child (launched by this process): no zombie; not ours: None
        status = read_exit_file(self._record_dir)
        if status is None and reaped is not None and reaped.si_code == os.CLD_EXITED:
            # The keeper could not write its record (disk full, record dir gone) but ended by
            # itself, and it exits with the simulation's $?: we are its parent and saw that.
            status = decode_shell_status(reaped.si_status)
            log.warning("exit_record_missing", run_id=self.run_id, keeper_status=reaped.si_status)
        self._status = self._with_memory(status if status is not None else UNKNOWN_EXIT)
        if status is None:
            log.warning(
                "keeper_lost",
                run_id=self.run_id,
                keeper_pid=self.record.keeper_pid,
                pid=self.record.pid,
            )
        else:
            log.debug(  # the loop logs run_exited with the same fields
                "run_process_ended",
                run_id=self.run_id,
                pid=self.record.pid,
                exit_code=status.exit_code,
                exit_signal=status.exit_signal,
            )
        return self._status

    def _with_memory(self, status: ExitStatus) -> ExitStatus:
        """The status with what the run's memory cgroup measured (peak, killed past its cap)."""
        if self.cgroup is None:
            return status
        try:
            report = cgroups.memory_report(self.cgroup)
        except OSError as exc:
            log.warning("memory_report_failed", run_id=self.run_id, error=str(exc))
            return status
        oom = report.oom_killed and status.exit_signal == signal.SIGKILL
        return replace(status, peak_memory_bytes=report.peak_bytes, out_of_memory=oom)

    def _group_signal(self, sig: int) -> bool | None:
        """Send `sig` to the group: True sent, False gone, None refused (not verifiably ours)."""
        if self._sim_pidfd is not None:
            sent = pidfd_group_signal(self._sim_pidfd, sig)
            if sent is not None:
                return sent
        # No pidfd (the simulation was gone before one could be opened) or an old kernel: a
        # plain killpg, only while the leader still exists with its recorded start time.
        if not leader_is_ours(self.record.sim_identity):
            return None
        try:
            os.killpg(self.record.pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, sig: int) -> bool:
        """Signal the run's group if verifiably the run's; False if gone or not ours (logged).

        A run with a memory cgroup is signalled there too: that reaches processes that left
        its group with setsid (a SIGKILL empties the cgroup)."""
        self._open_fd()
        if self.cgroup is not None:
            self._signal_cgroup(sig)
        try:
            sent = self._group_signal(sig)
        except PermissionError as exc:
            log.warning(
                "signal_failed",
                run_id=self.run_id,
                pgid=self.record.pgid,
                signal=signal_name(sig),
                error=str(exc),
            )
            return False
        if sent is None:
            log.warning(
                "signal_refused",
                run_id=self.run_id,
                pgid=self.record.pgid,
                signal=signal_name(sig),
                why="the group can no longer be verified as this run's",
            )
            return False
        if sent:
            log.info(
                "signal_sent", run_id=self.run_id, pgid=self.record.pgid, signal=signal_name(sig)
            )
        else:
            log.debug("signal_group_gone", run_id=self.run_id, pgid=self.record.pgid)
        return sent

    def _signal_cgroup(self, sig: int) -> None:
        assert self.cgroup is not None
        try:
            if sig == signal.SIGKILL:
                cgroups.kill(self.cgroup)
            else:
                cgroups.signal_members(self.cgroup, sig)
        except OSError as exc:
            log.warning("cgroup_signal_failed", run_id=self.run_id, error=str(exc))

    def group_alive(self) -> bool:
        """True while a live process is left in the run's group or its memory cgroup."""
        self._open_fd()
        if self.cgroup is not None and _populated(self.cgroup):
            return True
        try:
            present = self._group_signal(0)
        except PermissionError:
            present = True
        # Signal 0 also "reaches" zombies; only a look at the members tells them apart. The
        # group still exists here, so its number cannot have been reused meanwhile.
        return bool(present) and self._member_alive()

    def _member_alive(self) -> bool:
        """True if a live process is in the group; keeps a pidfd of it to wait on.

        The scan of /proc is what costs (milliseconds with many processes): while the member
        found last time still lives in the group, no scan is needed, and the loop waits on its
        pidfd (leftover_fileno) instead of looking again on a timer.
        """
        if self._member_fd is not None:
            if not readable(self._member_fd, 0) and self._member is not None:
                found = read_stat(self._member.pid)
                if (
                    found is not None
                    and found.start_ticks == self._member.start_ticks
                    and (found.pgrp == self.record.pgid and found.state not in EXITED_STATES)
                ):
                    return True
            os.close(self._member_fd)
            self._member_fd = self._member = None
        member = live_group_member(self.record.pgid)
        if member is None:
            return False
        identity = ProcessIdentity(member.pid, member.start_ticks, self.record.boot_id)
        self._member_fd = open_pidfd(identity, zombie_ok=False)
        self._member = member if self._member_fd is not None else None
        return True

    def leftover_fileno(self) -> int | None:
        """A pidfd of the group member group_alive() found last: readable when it ends."""
        return self._member_fd

    def release(self) -> None:
        """The run is settled: remove its memory cgroup if nothing is left in it."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                cgroups.remove(self.cgroup, 0.0)

    def close(self) -> None:
        """Close the pidfds (the processes are not touched)."""
        for fd in (self._fd, self._sim_pidfd, self._member_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._sim_pidfd = self._member_fd = None
        self._member = None
