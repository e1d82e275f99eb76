"""What this kernel offers to watch and signal processes, found out once per daemon.

- pidfds (Linux 5.3): a descriptor per process that becomes readable when it ends, and signals
  that cannot reach a reused pid. Without them (4.18: RHEL 8, Rocky 8) a launched keeper's end
  is seen as EOF on its report pipe, an adopted keeper's on a timer (`KEEPER_POLL_SECONDS`), and
  a lingering group's on a timer with backoff.
- group signals through a pidfd (PIDFD_SIGNAL_PROCESS_GROUP, Linux 6.9): name a group by the
  kernel object of its leader, even after the leader has exited. Without them (5.3 to 6.8)
  a group is signalled with killpg, but only while its identity checks out: the leader is still
  there with its recorded start time, or a live member of the group started no earlier than
  the leader (a group id cannot be reused while any member lives).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# <linux/pidfd.h>; not exported by the signal module of Python 3.11.
PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2
# What a kernel (or a seccomp filter, as in containers) answers for a syscall it lacks.
_MISSING = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES})


@dataclass(frozen=True)
class KernelMeans:
    """Which process means this kernel gives the local executor."""

    pidfds: bool  # pidfd_open, pollable pidfds, pidfd_send_signal, waitid(P_PIDFD)
    group_signals: bool  # pidfd_send_signal(..., PIDFD_SIGNAL_PROCESS_GROUP)

    def describe(self) -> str:
        """One line for logs and `runsup check`."""
        if not self.pidfds:
            return "no pidfds (Linux before 5.3): exits by pipe or timer, groups by /proc scan"
        if not self.group_signals:
            return "pidfds without group signals (Linux 5.3 to 6.8): groups signalled by killpg"
        return "pidfds with group signals (Linux 6.9 or later)"


FULL = KernelMeans(pidfds=True, group_signals=True)


def probe() -> KernelMeans:
    """Ask the kernel: pidfd_open on ourself, then a group signal 0 through that pidfd.

    Signal 0 sends nothing; ESRCH (we lead no group) still means the flag is understood."""
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as exc:
        if exc.errno in _MISSING:
            return KernelMeans(pidfds=False, group_signals=False)
        raise
    try:
        signal.pidfd_send_signal(fd, 0, None, PIDFD_SIGNAL_PROCESS_GROUP)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.EINVAL and exc.errno not in _MISSING:
            raise
        return KernelMeans(pidfds=True, group_signals=False)
    finally:
        os.close(fd)
    return FULL


@functools.cache
def detect() -> KernelMeans:
    """This kernel's means, probed on first use and logged once."""
    found = probe()
    log.info(
        "kernel_means",
        pidfds=found.pidfds,
        group_signals=found.group_signals,
        means=found.describe(),
        kernel=os.uname().release,
    )
    return found
