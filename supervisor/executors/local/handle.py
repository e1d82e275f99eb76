"""A run on this machine as the loop holds it: a watch on its keeper and one on its group."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import structlog

from supervisor.executors.base import UNKNOWN_EXIT, ExitStatus, ProcessRecord
from supervisor.executors.local import cgroups
from supervisor.executors.local.groupwatch import GroupWatch
from supervisor.executors.local.keeper import decode_shell_status, read_exit_file
from supervisor.executors.local.keeperwatch import KeeperWatch
from supervisor.executors.local.means import KernelMeans
from supervisor.signames import signal_name

log = structlog.get_logger(__name__)


def group_watch(
    record: ProcessRecord, means: KernelMeans, *, leader_pidfd: int | None, run_id: str | None
) -> GroupWatch:
    """The watch on a run's group: its members were born no earlier than its leader."""
    return GroupWatch(
        record.pgid,
        record.boot_id,
        means=means,
        leader=record.sim_identity,
        leader_pidfd=leader_pidfd,
        earliest_ticks=record.start_ticks,
        run_id=run_id,
    )


class LocalRunHandle:
    """A run on this machine: its keeper's end (KeeperWatch) and its group (GroupWatch)."""

    def __init__(
        self,
        record: ProcessRecord,
        *,
        record_dir: Path,
        run_id: str | None,
        keeper: KeeperWatch,
        group: GroupWatch,
    ) -> None:
        """Take ownership of both watches."""
        self.record = record
        self.run_id = run_id
        self._record_dir = record_dir
        self.keeper = keeper
        self.group = group
        self._status: ExitStatus | None = None
        self._closed = False

    @classmethod
    def keeper_gone(
        cls, record: ProcessRecord, *, record_dir: Path, run_id: str | None, means: KernelMeans
    ) -> LocalRunHandle:
        """A handle on what is left of a run whose keeper has already ended."""
        return cls(
            record,
            record_dir=record_dir,
            run_id=run_id,
            keeper=KeeperWatch(record.keeper_identity, gone=True),
            group=group_watch(record, means, leader_pidfd=None, run_id=run_id),
        )

    @property
    def closed(self) -> bool:
        """True once close() was called (the loop let go of the run)."""
        return self._closed

    @property
    def cgroup(self) -> cgroups.RunCgroup | None:
        """The run's memory cgroup, when it has a cap."""
        return self.group.cgroup

    @cgroup.setter
    def cgroup(self, value: cgroups.RunCgroup | None) -> None:
        self.group.cgroup = value

    def __enter__(self) -> LocalRunHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the run handle is closed")

    def fileno(self) -> int | None:
        """Readable once the run's keeper (hence the simulation) has ended; None where only
        a timer tells (an adopted keeper without pidfds: LocalExecutor.poll)."""
        self._check_open()
        return self.keeper.fileno()

    def exit_status(self) -> ExitStatus | None:
        """None while the keeper runs; then what it recorded, or UNKNOWN_EXIT if it was killed."""
        if self._status is not None:
            return self._status
        self._check_open()
        if not self.keeper.ended():
            return None
        reaped = self.keeper.reap_status()  # our child (launched by this process): no zombie left
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

    def signal_group(self, sig: int) -> bool:
        """Signal the run's group if verifiably the run's; False if gone or not ours (logged).

        A run with a memory cgroup is signalled there too: that reaches processes that left
        its group with setsid (a SIGKILL empties the cgroup, without waiting here)."""
        self._check_open()
        try:
            sent = self.group.signal(sig)
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

    def group_alive(self) -> bool:
        """True while a live process is left in the run's group or its memory cgroup."""
        self._check_open()
        return self.group.alive()

    def leftover_fileno(self) -> int | None:
        """After group_alive() said True: readable when the member it found ends (or None)."""
        return self.group.fileno()

    def group_check_delay(self) -> float:
        """Seconds until a lingering group is worth another look (grows while it lingers)."""
        return self.group.next_delay()

    def release(self) -> None:
        """The run is settled: remove its memory cgroup if nothing is left in it."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                cgroups.remove(self.cgroup, 0.0)

    def close(self) -> None:
        """Close the descriptors (the processes are not touched); idempotent."""
        self.keeper.close()
        self.group.close()
        self._closed = True
