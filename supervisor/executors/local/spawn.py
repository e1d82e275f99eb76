"""Starting a keeper: its log, its pipes, the program lookup and posix_spawn itself."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from supervisor.errors import LaunchError
from supervisor.executors.local.identity import readable
from supervisor.progress import logcap

# How much of the log a LaunchError quotes.
LAUNCH_LOG_TAIL_BYTES = 2000
LAUNCH_LOG_TAIL_LINES = 5
LOG_FILE_MODE = 0o640
# The keeper gets 0-4 (stdin, stdout, stderr, report pipe, go pipe); ours must lie above.
SPAWN_FIRST_FREE_FD = 5
KEEPER_ENDED = "ended before the simulation started"


def _fd_at_least(fd: int, minimum: int) -> int:
    """`fd` moved to a number >= minimum (the spawn's dup2 targets are 0-3); closes it on error."""
    if fd >= minimum:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)
    finally:
        os.close(fd)


def open_log(path: Path) -> tuple[int, int]:
    """The log opened for appending (fd, size before the run): the keeper's stdout and stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A symlink planted at the name is not followed (ELOOP); a FIFO fails (ENXIO), never blocks.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = _fd_at_least(os.open(path, flags, LOG_FILE_MODE), SPAWN_FIRST_FREE_FD)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)  # O_NONBLOCK off again for the keeper
        os.fchmod(fd, LOG_FILE_MODE)  # exactly, whatever the umask: the service's group reads
    except OSError:
        os.close(fd)
        raise
    return fd, st.st_size


def make_pipe(
    ours: contextlib.ExitStack, theirs: contextlib.ExitStack, *, child_writes: bool
) -> tuple[int, int]:
    """A pipe to the keeper: (our end, its end), each closed by the given stack."""
    read_end, write_end = os.pipe()
    mine, child = (read_end, write_end) if child_writes else (write_end, read_end)
    ours.callback(os.close, mine)
    child = _fd_at_least(child, SPAWN_FIRST_FREE_FD)
    theirs.callback(os.close, child)
    return mine, child


def inheritable_fds(keep: int) -> list[int]:
    """Open descriptors above `keep` that would leak into the keeper (not close-on-exec)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= keep:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            continue  # the descriptor listdir itself used
    return found


def exec_problem(path: Path) -> str | None:
    """Why exec would refuse `path`, in words; None if it would run it."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except PermissionError:
        return "cannot be reached (permission denied on a parent directory)"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a program"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if not os.access(path, os.X_OK):
        return f"is not executable (mode {stat.filemode(st.st_mode)})"
    return None


def resolve_program(name: str, env: Mapping[str, str], cwd: Path) -> str:
    """The absolute path exec would run for argv[0] (PATH from `env`); LaunchError if none."""
    if not name:
        raise LaunchError("the command is empty")
    if "/" in name:
        path = Path(name) if os.path.isabs(name) else cwd / name
        problem = exec_problem(path)
        if problem is not None:
            where = "" if os.path.isabs(name) else f" (relative to {cwd})"
            raise LaunchError(f"'{name}'{where} {problem}")
        return str(path)
    search = env.get("PATH")
    refused = []
    for entry in (search if search is not None else os.defpath).split(":"):
        # An empty PATH entry means the working directory (POSIX).
        path = cwd / entry / name if entry else cwd / name
        problem = exec_problem(path)
        if problem is None:
            return str(path)
        if problem != "does not exist":
            refused.append(f"{path} {problem}")
    if refused:
        raise LaunchError(f"command '{name}' cannot be run: " + "; ".join(refused))
    where = f"PATH={search}" if search is not None else f"the default PATH {os.defpath}"
    raise LaunchError(f"command '{name}' not found on {where}")


def log_tail(path: Path, start: int) -> str:
    """The last lines written to the log since offset `start`, on one line."""
    lines = logcap.tail_lines(path, start=start, max_bytes=LAUNCH_LOG_TAIL_BYTES)
    kept = [line.strip() for line in lines if line.strip()]
    return " | ".join(kept[-LAUNCH_LOG_TAIL_LINES:])


def read_report(fd: int, timeout: float) -> tuple[str | None, str]:
    """The first line the keeper side writes to the launch pipe: (line, "") or (None, why)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, f"did not report the simulation's start within {timeout:g} s"
        if not readable(fd, remaining):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None, KEEPER_ENDED
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace"), ""
