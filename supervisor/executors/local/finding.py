"""Finding a local run again after a daemon restart: from its row's record or its files alone.

Answers with one case of executors/base.py (Adopted, EndedWhileAway, StillStarting, NeverStarted,
FailedToStart, Lost); a run whose keeper is gone still gets a handle on its group when anything
of it lives, so what is left is stopped before the run is settled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from supervisor.errors import CapError
from supervisor.executors.base import (
    Adopted,
    EndedWhileAway,
    ExitStatus,
    FailedToStart,
    Lost,
    NeverStarted,
    ProcessIdentity,
    ProcessRecord,
    Recovery,
    RunRef,
    StillStarting,
)
from supervisor.executors.local import cgroups
from supervisor.executors.local.groupwatch import kill_group
from supervisor.executors.local.handle import LocalRunHandle, group_watch
from supervisor.executors.local.identity import (
    current_boot_id,
    is_same_process,
    open_pidfd,
    process_age_seconds,
)
from supervisor.executors.local.keeper import (
    KEEPER_FILE,
    SIM_FILE,
    identity_from_file,
    read_boot_id_file,
    read_exit_file,
)
from supervisor.executors.local.keeperwatch import KeeperWatch
from supervisor.executors.local.means import KernelMeans

log = structlog.get_logger(__name__)

LOST_MACHINE_RESTARTED = "the machine restarted"
LOST_KEEPER_KILLED = "the keeper process was killed; exit status unknown"
LOST_NEVER_STARTED = "never started"
# In the record dir of a capped run: its cap in bytes, for a daemon that adopts the run.
CAP_FILE = "memory_max"


class RunFinder:
    """Looks for runs an earlier daemon started, with this kernel's means."""

    def __init__(
        self,
        *,
        means: KernelMeans,
        caps: Callable[[], cgroups.CapSupport],
        report_timeout: float,
    ) -> None:
        """`caps`: what enforces memory caps here (asked only when a run may have a cgroup);
        `report_timeout`: how long a keeper may take to report before it counts as stuck."""
        self.means = means
        self._caps = caps
        self.report_timeout = report_timeout

    def recover(self, ref: RunRef) -> Recovery:
        """Find a run again after a restart, from its saved record or from its files alone."""
        record_dir = ref.record_dir.absolute()
        if ref.process is None:
            return self._recover_from_files(record_dir, ref.run_id)
        return self._recover_record(record_dir, ref.process, ref.run_id)

    def _recover_record(self, record_dir: Path, record: ProcessRecord, run_id: str) -> Recovery:
        boot_id = current_boot_id()
        # A recorded exit is the truth even from an earlier boot: read it before the boot id.
        status = read_exit_file(record_dir)
        if status is None and record.boot_id != boot_id:
            why = f"{LOST_MACHINE_RESTARTED} (boot id {record.boot_id}, now {boot_id})"
            log.warning("run_lost", run_id=run_id, why=why)
            return Lost(why, record)
        if status is not None:
            return self._ended_while_away(record_dir, record, run_id, status)
        keeper = self._keeper_watch(record.keeper_identity)
        if keeper is not None:
            log.info("run_adopted", run_id=run_id, pid=record.pid, keeper_pid=record.keeper_pid)
            handle = LocalRunHandle(
                record,
                record_dir=record_dir,
                run_id=run_id,
                keeper=keeper,
                group=group_watch(record, self.means, leader_pidfd=self._sim_fd(record),
                                  run_id=run_id),
            )
            handle.cgroup = self._find_cgroup(run_id)
            if handle.cgroup is not None:
                _restore_cap(handle.cgroup, record_dir)
            return Adopted(handle)
        status = read_exit_file(record_dir)  # the keeper may have finished since the first look
        if status is not None:
            return self._ended_while_away(record_dir, record, run_id, status)
        why = f"{LOST_KEEPER_KILLED} (keeper pid {record.keeper_pid})"
        leftover = self._leftover(record_dir, record, run_id)
        log.warning("run_lost", run_id=run_id, why=why, simulation_alive=leftover is not None)
        return Lost(why, record, leftover=leftover)

    def _ended_while_away(
        self, record_dir: Path, record: ProcessRecord, run_id: str, status: ExitStatus
    ) -> EndedWhileAway:
        """Ended with its status kept; what is left of its group still gets stopped."""
        leftover = self._leftover(record_dir, record, run_id)
        log.info(
            "run_ended_while_away",
            run_id=run_id,
            exit_code=status.exit_code,
            exit_signal=status.exit_signal,
            group_left=leftover is not None,
        )
        return EndedWhileAway(status, record, leftover=leftover)

    def _leftover(
        self, record_dir: Path, record: ProcessRecord, run_id: str
    ) -> LocalRunHandle | None:
        """A handle on the group of a run whose keeper is gone, if anything of it lives."""
        handle = LocalRunHandle(
            record,
            record_dir=record_dir,
            run_id=run_id,
            keeper=KeeperWatch(record.keeper_identity, gone=True),
            group=group_watch(record, self.means, leader_pidfd=self._sim_fd(record),
                              run_id=run_id),
        )
        handle.cgroup = self._find_cgroup(run_id)
        if handle.group_alive():
            return handle
        handle.close()
        return None

    def _keeper_watch(self, keeper: ProcessIdentity) -> KeeperWatch | None:
        """A watch on a keeper that is not our child; None if it is gone."""
        if self.means.pidfds:
            fd = open_pidfd(keeper, zombie_ok=False)
            return None if fd is None else KeeperWatch(keeper, pidfd=fd)
        return KeeperWatch(keeper) if is_same_process(keeper) else None

    def _sim_fd(self, record: ProcessRecord) -> int | None:
        return open_pidfd(record.sim_identity, zombie_ok=True) if self.means.pidfds else None

    def _find_cgroup(self, run_id: str) -> cgroups.RunCgroup | None:
        """The memory cgroup an earlier daemon made for the run, if caps work here at all."""
        caps = self._caps()
        if not caps.enforced:
            return None
        try:
            return cgroups.find(caps, run_id)
        except CapError:  # not a run id (the row's was checked before: a caller's label)
            return None

    def _recover_from_files(self, record_dir: Path, run_id: str) -> Recovery:
        boot_id = read_boot_id_file(record_dir)
        if boot_id is None:
            return NeverStarted(f"{LOST_NEVER_STARTED} (no launch recorded)")
        if boot_id != current_boot_id():
            status = read_exit_file(record_dir)
            if status is not None:
                return _failed_before_start(status)
            why = f"{LOST_MACHINE_RESTARTED} (boot id {boot_id}, now {current_boot_id()})"
            # Nothing from that boot runs any more; whether the simulation ever ran is unknown.
            if (record_dir / SIM_FILE).exists():
                return Lost(why, None)
            return NeverStarted(why)
        sim = identity_from_file(record_dir / SIM_FILE, boot_id)
        keeper = identity_from_file(record_dir / KEEPER_FILE, boot_id)
        if sim is not None and keeper is not None:
            record = ProcessRecord(
                pid=sim.pid,
                pgid=sim.pid,  # the simulation leads its own group: setsid() before the line
                start_ticks=sim.start_ticks,
                boot_id=boot_id,
                keeper_pid=keeper.pid,
                keeper_start_ticks=keeper.start_ticks,
            )
            return self._recover_record(record_dir, record, run_id)
        return self._recover_unreported(record_dir, keeper, run_id)

    def _recover_unreported(
        self, record_dir: Path, keeper: ProcessIdentity | None, run_id: str
    ) -> Recovery:
        """No simulation ever reported from here: say so, or wait for a keeper still starting."""
        if keeper is not None and is_same_process(keeper):
            age = process_age_seconds(keeper.start_ticks)
            if age < self.report_timeout:
                # Not blocking here: the caller looks again later.
                return StillStarting(f"keeper pid {keeper.pid} is {age:.1f} s old")
            kill_group(keeper, self.means, run_id, "the keeper never reported the simulation")
            why = f"{LOST_NEVER_STARTED} (keeper pid {keeper.pid} never reported; killed)"
            return NeverStarted(why)
        status = read_exit_file(record_dir)
        if status is not None:
            # The keeper ran and recorded a failure before the simulation could start.
            return _failed_before_start(status)
        seen = "its keeper started but ended" if keeper is not None else "no keeper started"
        return NeverStarted(f"{LOST_NEVER_STARTED} ({seen})")


def _restore_cap(cgroup: cgroups.RunCgroup, record_dir: Path) -> None:
    """Give an adopted run its cap again if its cgroup lost it (cgroups.ensure_cap)."""
    try:
        memory_max = int((record_dir / CAP_FILE).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return  # launched before caps were recorded, or uncapped
    try:
        cgroups.ensure_cap(cgroup, memory_max)
    except CapError as exc:
        log.warning("cgroup_cap_not_restored", run_id=cgroup.run_id, error=str(exc))


def _failed_before_start(status: ExitStatus) -> FailedToStart:
    how = status.describe()
    return FailedToStart(f"the keeper failed before the simulation ran ({how})")
