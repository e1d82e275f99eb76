"""Process identity on Linux: a pid is a process only with its start time and the boot.

A pid alone is not a process (pid_max is small, pids are reused). A process is (pid, start time
in clock ticks since boot, boot id), and nothing is signalled unless that still checks out.
Group signals go through a pidfd of the group's leader with PIDFD_SIGNAL_PROCESS_GROUP (Linux
6.9+), which names the group by kernel object rather than by number, so even a group whose
leader has exited is signalled only if its members are ours; older kernels (means.py) get
killpg behind the same checks (groupwatch.py).
"""

from __future__ import annotations

import functools
import os
import re
import select
import signal
from pathlib import Path
from typing import NamedTuple

from supervisor.executors.base import ProcessIdentity
from supervisor.executors.local.means import PIDFD_SIGNAL_PROCESS_GROUP

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
PROC_PATH = Path("/proc")
PID_MAX_LIMIT = 4_194_304  # the kernel's ceiling for pid_max: a larger "pid" is garbage

EXITED_STATES = frozenset("ZXx")  # zombie or dead: the process has exited
_STAT_HEAD = re.compile(r"\A([0-9]+) \(")


@functools.cache
def current_boot_id() -> str:
    """This boot's id (changes at every boot): a pid from another boot means nothing.

    Read once: a process never outlives its boot (it was read on every identity check)."""
    return BOOT_ID_PATH.read_text(encoding="ascii").strip()


class Stat(NamedTuple):
    """The fields of /proc/<pid>/stat the process layer uses."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int


def parse_stat(line: str) -> Stat:
    """The fields of a /proc/<pid>/stat line; ValueError if it is not one."""
    head = _STAT_HEAD.match(line)
    # comm may hold spaces and ')': the fields start after the LAST ')'.
    _, paren, rest = line.rpartition(")")
    if head is None or not paren:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    fields = rest.split()
    if len(fields) < 20 or len(fields[0]) != 1:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    try:
        numbers = [int(fields[i]) for i in (1, 2, 3, 19)]  # ppid, pgrp, session, starttime
    except ValueError:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}") from None
    pid = int(head.group(1))
    if pid <= 0 or numbers[3] < 0:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    return Stat(pid, fields[0], numbers[0], numbers[1], numbers[2], numbers[3])


def parse_stat_line(line: str) -> tuple[int, int]:
    """(pid, start_ticks) from a /proc/<pid>/stat line; ValueError if it is not one."""
    parsed = parse_stat(line)
    return parsed.pid, parsed.start_ticks


def read_stat(pid: int) -> Stat | None:
    """The process's stat fields, zombies included; None if there is no such process."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return parse_stat(fh.read())
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a running process; None if there is none (a zombie has exited: None)."""
    found = read_stat(pid)
    if found is None or found.state in EXITED_STATES:
        return None
    return ProcessIdentity(pid, found.start_ticks, current_boot_id())


def is_same_process(ident: ProcessIdentity) -> bool:
    """True if `ident` still names a live (not zombie) process: same boot, pid, start time."""
    if ident.boot_id != current_boot_id():
        return False
    found = read_stat(ident.pid)
    return (
        found is not None
        and found.state not in EXITED_STATES
        and found.start_ticks == ident.start_ticks
    )


def open_pidfd(ident: ProcessIdentity, *, zombie_ok: bool) -> int | None:
    """A pidfd that surely names `ident`, or None: opened first, identity checked after."""
    if ident.boot_id != current_boot_id() or not 0 < ident.pid <= PID_MAX_LIMIT:
        return None
    try:
        fd = os.pidfd_open(ident.pid)
    except ProcessLookupError:
        return None
    found = read_stat(ident.pid)
    same = found is not None and found.start_ticks == ident.start_ticks
    if not same or (found is not None and found.state in EXITED_STATES and not zombie_ok):
        os.close(fd)
        return None
    return fd


def readable(fd: int, timeout: float) -> bool:
    """True once `fd` is readable, waiting at most `timeout` seconds."""
    # poll, not select: a daemon with many runs holds more than FD_SETSIZE descriptors.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def reap_status(pidfd: int) -> os.waitid_result | None:
    """The exit status of the pidfd's process, reaping it, once it is our exited child (no zombie
    left); None while it runs or when it is not our child."""
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None


def live_group_member(pgid: int) -> Stat | None:
    """A process of group `pgid` that is not a zombie, or None (a scan of all of /proc)."""
    # Zombies stay in their group until reaped, and an init that does not reap (as in some
    # containers) keeps orphans' zombies forever: they must not count as alive.
    for entry in os.scandir(PROC_PATH):
        if not entry.name.isdigit():
            continue
        found = read_stat(int(entry.name))
        if found is not None and found.pgrp == pgid and found.state not in EXITED_STATES:
            return found
    return None


def group_member(
    pgid: int, *, live: bool, earliest_ticks: int | None = None, latest_ticks: int | None = None
) -> Stat | None:
    """A process of group `pgid` born within [earliest_ticks, latest_ticks], or None.

    `live`: zombies do not count (they stay in their group until reaped). Any member, zombie
    or not, keeps the group's id from being reused, so while one is found the id is the run's.
    """
    for entry in os.scandir(PROC_PATH):
        if not entry.name.isdigit():
            continue
        found = read_stat(int(entry.name))
        if found is None or found.pgrp != pgid or (live and found.state in EXITED_STATES):
            continue
        if earliest_ticks is not None and found.start_ticks < earliest_ticks:
            continue
        if latest_ticks is not None and found.start_ticks > latest_ticks:
            continue
        return found
    return None


def pidfd_group_signal(pidfd: int, sig: int) -> bool:
    """Signal the group the pidfd's process leads (Linux 6.9+). True sent, False gone."""
    try:
        signal.pidfd_send_signal(pidfd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
    except ProcessLookupError:
        return False
    return True


def leader_is_ours(ident: ProcessIdentity) -> bool:
    """The group's leader still exists (zombie or not) with the recorded start time."""
    if ident.boot_id != current_boot_id():
        return False
    found = read_stat(ident.pid)
    # While the leader exists, even as a zombie, its pid cannot be reused as a group id.
    return found is not None and found.start_ticks == ident.start_ticks


def process_age_seconds(start_ticks: int) -> float:
    """How long ago a process with this start time (clock ticks since boot) started.

    Both ends are read off the kernel's boot clock, so a wall-clock jump does not change it.
    """
    uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
