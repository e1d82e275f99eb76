"""Run a command as if on an older kernel: a seccomp filter refuses what that kernel lacks.

    python tests/kernelclass.py CLASS -- COMMAND [ARG...]

The filter (libseccomp through ctypes) is installed in this process, which then execs COMMAND:
it holds for COMMAND and for everything COMMAND starts (seccomp filters are inherited across
fork and exec and cannot be removed). The classes, each refusing exactly as those kernels do:

- `none`: Linux before 5.3 (RHEL 8 / Rocky 8's 4.18). No pidfds: pidfd_open,
  pidfd_send_signal, pidfd_getfd and clone3 answer ENOSYS (glibc's posix_spawn falls back to
  clone there, as it does on 4.18), and so does close_range (5.9; Python's subprocess falls
  back to closing one by one); waitid(P_PIDFD, ...) answers EINVAL (an unknown id type).
- `nogroup`: Linux 5.3 to 6.8 (Ubuntu 22.04/24.04, Debian 12, RHEL 9): pidfds, but
  pidfd_send_signal with a non-zero flags argument (PIDFD_SIGNAL_PROCESS_GROUP, 6.9) answers
  EINVAL.
- `full`: no filter (the newest kernels).

The system tests pick a class with RUNSUP_TEST_KERNEL_CLASS (tests/daemon_harness.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from collections.abc import Sequence

CLASSES = ("none", "nogroup", "full")
ENV_VAR = "RUNSUP_TEST_KERNEL_CLASS"

# <seccomp.h>
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_NE = 1
_SCMP_CMP_EQ = 4
_P_PIDFD = 3  # <linux/wait.h>
# Syscalls a 4.18 kernel does not have (ENOSYS), all pidfd-related or used by Python/glibc
# with a fallback: what the `none` class refuses.
_MISSING_BEFORE_5_3 = ("pidfd_open", "pidfd_send_signal", "pidfd_getfd", "clone3", "close_range")


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0x0000FFFF)  # SCMP_ACT_ERRNO(code)


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _add(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        raise OSError(f"libseccomp does not know the syscall {name}")
    array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc < 0:
        raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")


def install(kernel_class: str) -> None:
    """Install the filter of `kernel_class` in this process (nothing for `full`)."""
    if kernel_class not in CLASSES:
        raise ValueError(f"unknown kernel class {kernel_class!r} (one of {', '.join(CLASSES)})")
    if kernel_class == "full":
        return
    lib = _library()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        if kernel_class == "none":
            for name in _MISSING_BEFORE_5_3:
                _add(lib, ctx, _errno_action(errno.ENOSYS), name)
            pidfd_id = _ArgCmp(0, _SCMP_CMP_EQ, _P_PIDFD, 0)
            _add(lib, ctx, _errno_action(errno.EINVAL), "waitid", pidfd_id)
        else:  # nogroup: the flags argument (the 4th) must be 0 before 6.9
            flags = _ArgCmp(3, _SCMP_CMP_NE, 0, 0)
            _add(lib, ctx, _errno_action(errno.EINVAL), "pidfd_send_signal", flags)
        rc = lib.seccomp_load(ctx)  # sets no_new_privs first (libseccomp's default)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def looser_than_session(kernel_class: str) -> str | None:
    """Why `kernel_class` cannot be had in this session (its own filter, set by ENV_VAR, is
    stricter: a filter can only be added to), or None."""
    session = os.environ.get(ENV_VAR)
    if session in CLASSES and CLASSES.index(kernel_class) > CLASSES.index(session):
        return f"the session runs as kernel class {session} ({ENV_VAR}), stricter than it"
    return None


def wrap(kernel_class: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` run under `kernel_class` (unchanged for None or `full`)."""
    if kernel_class is None or kernel_class == "full":
        return list(argv)
    return [sys.executable, os.path.abspath(__file__), kernel_class, "--", *argv]


def main(args: Sequence[str]) -> int:
    """Install the class's filter and exec the command; 2 on a usage error."""
    if len(args) < 3 or args[1] != "--" or args[0] not in CLASSES:
        print(f"usage: kernelclass.py {{{'|'.join(CLASSES)}}} -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    install(args[0])
    os.execvp(args[2], list(args[2:]))
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
