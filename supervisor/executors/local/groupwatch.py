"""A run's process group (and memory cgroup) watched until nothing of it lives, on any kernel.

One object answers the three questions the loop asks of a group: is anything of it alive,
what to wait on before asking again (one fd, or a delay that grows while the group lingers),
and signal it, only while it is verifiably the run's. The means differ by kernel (means.py):

- signals: through the leader's pidfd with PIDFD_SIGNAL_PROCESS_GROUP (6.9+); else killpg while
  the leader is still there with its recorded start time; else killpg while a member of the
  group born no earlier than the leader lives (a group id is not reused while any member
  exists, and nothing born before the leader can have joined its session).
- liveness: the run's cgroup (populated) where it has one, else the group: one signal 0 through
  the leader's pidfd tells "nothing left" cheaply, then a /proc scan (or a cheap re-look at the
  member found last) tells live members from zombies.
- waiting: a pidfd of the member found last (readable when it ends) and, always, a delay
  doubling (executors/backoff.py) (a member may leave the
  group without ending, and without pidfds the delay is all there is).

A SIGKILL to a cgroup is sent once and never waited for here: the watch's next looks see it
empty (cgroup v1 has no atomic kill, so each look while killing sweeps its members again).
"""

from __future__ import annotations

import os
import signal

import structlog

from supervisor.executors.backoff import Backoff
from supervisor.executors.base import ProcessIdentity
from supervisor.executors.local import cgroups
from supervisor.executors.local.identity import (
    EXITED_STATES,
    Stat,
    current_boot_id,
    group_member,
    leader_is_ours,
    open_pidfd,
    pidfd_group_signal,
    read_stat,
    readable,
)
from supervisor.executors.local.means import KernelMeans

log = structlog.get_logger(__name__)


class GroupWatch:
    """Process group `pgid` of one boot, and the run's cgroup, until nothing of them lives."""

    def __init__(
        self,
        pgid: int,
        boot_id: str,
        *,
        means: KernelMeans,
        leader: ProcessIdentity | None = None,
        leader_pidfd: int | None = None,
        earliest_ticks: int | None = None,
        latest_ticks: int | None = None,
        run_id: str | None = None,
    ) -> None:
        """Own `leader_pidfd`. A member counts only if born within [earliest, latest] ticks."""
        self.pgid = pgid
        self.boot_id = boot_id
        self.means = means
        self.leader = leader  # the group's leader as recorded (pid == pgid), if known
        self.cgroup: cgroups.RunCgroup | None = None
        self._leader_fd = leader_pidfd
        self._earliest = earliest_ticks
        self._latest = latest_ticks
        self._run_id = run_id
        self._member: Stat | None = None  # a live member found by alive(), watched cheaply
        self._member_fd: int | None = None
        self._backoff = Backoff()
        self._killing = False  # a SIGKILL was sent: looks sweep a v1 cgroup again

    # -- signals --

    def signal(self, sig: int) -> bool | None:
        """Send `sig` to the group (and cgroup): True sent, False gone, None not ours."""
        if self.boot_id != current_boot_id():
            return None
        if sig == signal.SIGKILL:
            self._killing = True
            self._backoff.reset()
        if self.cgroup is not None:
            self._signal_cgroup(sig)
        if self._leader_fd is not None and self.means.group_signals:
            return pidfd_group_signal(self._leader_fd, sig)
        if self.leader is not None and leader_is_ours(self.leader):
            # While the leader exists, even as a zombie, its pid cannot be reused as a group id.
            return _killpg(self.pgid, sig)
        if self._leader_pid_reused() or self._member_of(live=True) is None:
            return False  # zombies only (or nothing): nothing left to signal
            return False
        # A member found just now pins the group's id; between the scan and the killpg the
        # whole group would have to end and its id be handed out again (a full pid cycle).
        return _killpg(self.pgid, sig)

    def _leader_pid_reused(self) -> bool:
        """The leader's pid names another process now: the group emptied before (a pid is not
        handed out again while a group of that number has any member)."""
        if self.leader is None:
            return False
        found = read_stat(self.leader.pid)
        return found is not None and found.start_ticks != self.leader.start_ticks

    def _signal_cgroup(self, sig: int) -> None:
        assert self.cgroup is not None
        try:
            if sig == signal.SIGKILL:
                cgroups.kill(self.cgroup, timeout=0.0)  # once; alive() tells when it is empty
            else:
                cgroups.signal_members(self.cgroup, sig)
        except OSError as exc:
            log.warning("cgroup_signal_failed", run_id=self._run_id, error=str(exc))

    # -- liveness --

    def alive(self) -> bool:
        """True while a live process is left in the group or the cgroup (looks now)."""
        if self.cgroup is not None and self._cgroup_populated():
            return True
        if self.boot_id != current_boot_id():
            return False
        if self._leader_fd is not None and self.means.group_signals:
            try:
                if not pidfd_group_signal(self._leader_fd, 0):
                    self._forget_member()
                    return False  # no member at all, not even a zombie: no scan needed
            except PermissionError:
                pass
        return self._member_alive()

    def _cgroup_populated(self) -> bool:
        assert self.cgroup is not None
        try:
            if self._killing and self.cgroup.version is cgroups.CgroupVersion.V1:
                cgroups.kill(self.cgroup, timeout=0.0)  # v1: what forked during the last sweep
            return cgroups.populated(self.cgroup)
        except OSError:
            return False

    def _member_of(self, *, live: bool) -> Stat | None:
        return group_member(
            self.pgid, live=live, earliest_ticks=self._earliest, latest_ticks=self._latest
        )

    def _member_alive(self) -> bool:
        """True if a live process is in the group; keeps it (and its pidfd) to look at cheaply.

        The scan of /proc is what costs (milliseconds with many processes): while the member
        found last time still lives in the group, no scan is needed."""
        if self._member is None and self._leader_pid_reused():
            return False
        member = self._member
        if member is not None:
            ended = self._member_fd is not None and readable(self._member_fd, 0)
            found = None if ended else read_stat(member.pid)
            if found is not None and found.start_ticks == member.start_ticks and (
                found.pgrp == self.pgid and found.state not in EXITED_STATES
            ):
                return True
            self._forget_member()
        if not _group_exists(self.pgid):
            return False  # no process at all has that group id: no scan needed
        member = self._member_of(live=True)
        if member is None:
            return False
        self._member = member
        if self.means.pidfds:
            identity = ProcessIdentity(member.pid, member.start_ticks, self.boot_id)
            self._member_fd = open_pidfd(identity, zombie_ok=False)
        return True

    def _forget_member(self) -> None:
        if self._member_fd is not None:
            os.close(self._member_fd)
        self._member_fd = self._member = None

    # -- waiting --

    def fileno(self) -> int | None:
        """After alive() said True: readable when the member it found ends (None: no pidfds)."""
        return self._member_fd

    def next_delay(self) -> float:
        """Seconds until the group is worth another look; doubles at each call (up to a max)."""
        return self._backoff.next()

    def close(self) -> None:
        """Close the pidfds (the processes are not touched); idempotent."""
        self._forget_member()
        if self._leader_fd is not None:
            os.close(self._leader_fd)
            self._leader_fd = None


def _group_exists(pgid: int) -> bool:
    """False if no process (not even a zombie) has this group id: signal 0 sends nothing."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True



def kill_group(
    leader: ProcessIdentity, means: KernelMeans, run_id: str | None, why: str
) -> bool:
    """SIGKILL the group `leader` leads, if it is still that leader's group; True if sent."""
    fd = open_pidfd(leader, zombie_ok=True) if means.pidfds else None
    watch = GroupWatch(
        leader.pid,
        leader.boot_id,
        means=means,
        leader=leader,
        leader_pidfd=fd,
        earliest_ticks=leader.start_ticks,
        run_id=run_id,
    )
    try:
        sent = watch.signal(signal.SIGKILL)
    finally:
        watch.close()
    if sent:
        log.warning("signal_sent", run_id=run_id, pgid=leader.pid, signal="SIGKILL", why=why)
    return bool(sent)
