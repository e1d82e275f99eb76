"""Hand a systemd unit's cgroup v1 memory directory to its service user, as root, before start.

systemd's `Delegate=yes` gives the service user its cgroup on v2 (one hierarchy), but on a
cgroup v1 or hybrid host only systemd's own name=systemd hierarchy: the unit's directory in
the memory hierarchy stays root's, so a daemon running as its user cannot make the runs'
capped cgroups there. The shipped unit runs this module first with full privileges
(`ExecStartPre=+... -m supervisor.executors.local.cgroup_handover run-supervisor`); it finds
its own memory cgroup (the unit's: systemd puts ExecStartPre= there) and gives the directory
and its process lists to the user. The kernel still applies the unit's own limits above the
runs' (v1 memory limits are hierarchical), so the user gains no memory beyond the unit's.

It does nothing, successfully, where there is no v1 memory hierarchy (cgroup v2 hosts) and
refuses to hand over the root of a hierarchy.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from supervisor.errors import CapError
from supervisor.executors.local import cgroups

# What the user gets besides the directory: moving processes in (v1 has both files).
HANDED_FILES = ("cgroup.procs", "tasks")


def own_v1_memory_dir(proc: Path = cgroups.PROC_ROOT) -> Path | None:
    """This process's directory in the v1 memory hierarchy; None where there is none."""
    mounts = cgroups.parse_mountinfo((proc / "self" / "mountinfo").read_text())
    _, memory_path = cgroups.parse_proc_cgroup((proc / "self" / "cgroup").read_text())
    mount = next((m for m in mounts if m.fstype == "cgroup" and "memory" in m.options), None)
    if mount is None or memory_path is None:
        return None
    directory = cgroups._mount_path(mount, memory_path)
    if directory is None or directory == mount.point:
        raise CapError(
            f"refusing to hand over the memory cgroup {memory_path}: "
            "not a unit's own cgroup (run this as ExecStartPre=+ of the unit)"
        )
    return directory


def hand_over(user: str, proc: Path = cgroups.PROC_ROOT) -> Path | None:
    """Give `user` (and its group) this process's v1 memory cgroup; the directory, or None."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise CapError(f"no such user: {user}") from None
    directory = own_v1_memory_dir(proc)
    if directory is None:
        return None
    try:
        for path in (directory, *(directory / name for name in HANDED_FILES)):
            os.chown(path, account.pw_uid, account.pw_gid)
    except OSError as exc:
        raise CapError(f"cannot hand {directory} to {user}: {exc.strerror}") from None
    return directory


def main(argv: list[str]) -> int:
    """`python -m supervisor.executors.local.cgroup_handover USER`: 0 when done or not needed."""
    if len(argv) != 1:
        print("usage: python -m supervisor.executors.local.cgroup_handover USER", file=sys.stderr)
        return 2
    try:
        directory = hand_over(argv[0])
    except (CapError, OSError) as exc:
        # The daemon still starts; a run that asks for a cap fails, saying why.
        print(f"memory cgroup not handed over: {exc}", file=sys.stderr)
        return 0
    if directory is not None:
        print(f"memory cgroup {directory} handed to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
