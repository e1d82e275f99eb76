"""The one place that spawns or signals processes: launch, identity, group signals, exit status.

Linux only. Each run gets a *keeper*: a tiny POSIX sh (dash) process that is the simulation's
parent and writes its exit status to a file, so the status survives the daemon being restarted
or SIGKILLed (a process that is not your child cannot be waited for). The chain is

    daemon --posix_spawn(setsid)--> keeper sh --fork--> setsid --exec--> sh --exec--> simulation

The keeper leads its own session (immune to the daemon's terminal Ctrl-C and SIGHUP). util-linux
`setsid`, run from a process that is not a group leader, calls setsid() without forking, so the
simulation keeps that pid and leads a session and process group of its own: pid == pgid, and the
keeper is not in the group. `killpg(pgid, SIGTERM)` by anyone reaches the simulation and its
children, never the keeper.

Files in the record directory (the keeper writes all but `boot_id`):

    boot_id   the boot the launch happened in (written by the daemon before spawning)
    keeper    the keeper's /proc/<pid>/stat line, written first thing
    sim       the simulation's stat line, written after setsid() and before exec
    exit      the simulation's status as sh reports it ($?), written when it has ended

sh reports a death by signal N as 128+N, so a program that exits with 143 by itself reads as
killed by SIGTERM: the two cannot be told apart (see `decode_shell_status`).

Identity: a pid alone is not a process (pid_max is small, pids are reused). A process is
(pid, start time in clock ticks since boot, boot id), and nothing is signalled unless that still
checks out. Group signals go through a pidfd of the simulation with
PIDFD_SIGNAL_PROCESS_GROUP (Linux 6.9+), which names the group by kernel object rather than by
number, so even a group whose leader has exited is signalled only if its members are ours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import shutil
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol

import structlog

from supervisor.errors import LaunchError

log = structlog.get_logger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
PROC_PATH = Path("/proc")
PID_MAX_LIMIT = 4_194_304  # the kernel's ceiling for pid_max: a larger "pid" is garbage
SH_PATH = "/bin/sh"
# Used when `setsid` is not on the daemon's PATH (util-linux installs it here).
SETSID_FALLBACK_PATH = "/usr/bin/setsid"

# How long the keeper may take to report the simulation's pid before the launch fails.
LAUNCH_REPORT_TIMEOUT = 5.0
# After a failed launch: how long to wait for the keeper to end by itself, then to be reaped.
KEEPER_EXIT_GRACE = 1.0
KEEPER_REAP_TIMEOUT = 2.0

KEEPER_FILE = "keeper"
SIM_FILE = "sim"
EXIT_FILE = "exit"
BOOT_ID_FILE = "boot_id"
RECORD_FILES = (KEEPER_FILE, SIM_FILE, EXIT_FILE, BOOT_ID_FILE)

# How much of the log a LaunchError quotes.
LOG_TAIL_BYTES = 2000
LOG_TAIL_LINES = 5
LOG_FILE_MODE = 0o640
# The keeper gets 0-4 (stdin, stdout, stderr, report pipe, go pipe); ours must lie above.
SPAWN_FIRST_FREE_FD = 5
KEEPER_ENDED = "ended before the simulation started"

LOST_MACHINE_RESTARTED = "the machine restarted"
LOST_KEEPER_KILLED = "the keeper process was killed; exit status unknown"
LOST_NEVER_STARTED = "never started"

# <linux/pidfd.h>; not exported by the signal module of Python 3.11.
_PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2
_EXITED_STATES = frozenset("ZXx")  # zombie or dead: the process has exited
_STAT_HEAD = re.compile(r"\A([0-9]+) \(")
_EXIT_TEXT = re.compile(rb"\A([0-9]{1,3})\n\Z")
# Everything the daemon may have set to "ignore" goes back to default in the keeper: an ignored
# signal stays ignored across exec and a non-interactive sh cannot trap it (think `nohup`).
# (glibc's posix_spawn leaves its two internal signals, 32 and 33, ignored and will not let them
# be named here; a glibc program installs its own handlers for them when it needs them.)
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

# $1 record dir, $2 setsid, $3 working dir, then the simulation's argv (argv[0] resolved).
# Exit code 125: the keeper could not write its records or enter the working directory.
# fd 3 is the report pipe (stat line to the daemon), fd 4 the go pipe (EOF from the daemon once
# it holds a pidfd of the simulation: so even a simulation that exits at once, leaving
# children behind, leaves a group the daemon can verify; a daemon that died gives EOF too).
# Variables carry a prefix because sh exports any variable that came
# in from the environment: a plain `d=...` would rewrite a `d` the simulation was given.
# - trap with `:`, not '': a caught signal is reset to default in the child, an ignored one
#   would stay ignored in the simulation.
# - the simulation runs in the foreground: a background `&` job starts with SIGINT and SIGQUIT
#   ignored. sh defers the trap until the foreground command ends, then `$?` is still its.
# - `cd` here because posix_spawn has no chdir; OLDPWD is put back as it came in (or unset).
# - the stat line is read after setsid(), so the moment the daemon sees it the pid is alive and
#   leads its group. The file is written before the pipe (a restarted daemon finds the run),
#   and a failed pipe write (daemon gone) must not kill the launch: SIGPIPE is ignored just
#   for that write.
# - `exit` is written in place, not via a temporary file and mv (one more fork+exec): nobody
#   reads it before the keeper has ended, and a restarted daemon only trusts a complete line.
KEEPER_SCRIPT = """trap : TERM INT HUP
_runsup_d=$1
read -r _runsup_l </proc/$$/stat
printf '%s\\n' "$_runsup_l" >"$1/keeper" || exit 125
_runsup_o=${OLDPWD+1}$OLDPWD
cd -P -- "$3" || exit 125
if [ "$_runsup_o" ]; then OLDPWD=${_runsup_o#1}; else unset OLDPWD; fi
_runsup_s=$2
shift 3
"$_runsup_s" /bin/sh -c 'read -r _runsup_l </proc/$$/stat
printf "%s\\n" "$_runsup_l" >"$1/sim" || exit 125
trap "" PIPE
printf "%s\\n" "$_runsup_l" >&3 2>/dev/null
trap - PIPE
read -r _runsup_l <&4
shift
exec "$@" 3>&- 4<&-' runsup-sim "$_runsup_d" "$@"
_runsup_rc=$?
printf '%s\\n' "$_runsup_rc" >"$_runsup_d/exit"
exit "$_runsup_rc"
"""
KEEPER_ARGV0 = "runsup-keeper"


# -- identity -----------------------------------------------------------------------------------


def current_boot_id() -> str:
    """This boot's id (changes at every boot): a pid from another boot means nothing."""
    return BOOT_ID_PATH.read_text(encoding="ascii").strip()


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as it can be recognised later: pid, start time (ticks since boot), boot."""

    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat; exact, and unchanged by exec
    boot_id: str


class _Stat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int


def _parse_stat(line: str) -> _Stat:
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
    return _Stat(pid, fields[0], numbers[0], numbers[1], numbers[2], numbers[3])


def parse_stat_line(line: str) -> tuple[int, int]:
    """(pid, start_ticks) from a /proc/<pid>/stat line; ValueError if it is not one."""
    parsed = _parse_stat(line)
    return parsed.pid, parsed.start_ticks


def _read_stat(pid: int) -> _Stat | None:
    """The process's stat fields, zombies included; None if there is no such process."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return _parse_stat(fh.read())
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a running process; None if there is none (a zombie has exited: None)."""
    found = _read_stat(pid)
    if found is None or found.state in _EXITED_STATES:
        return None
    return ProcessIdentity(pid, found.start_ticks, current_boot_id())


def is_same_process(ident: ProcessIdentity) -> bool:
    """True if `ident` still names a live (not zombie) process: same boot, pid, start time."""
    if ident.boot_id != current_boot_id():
        return False
    found = _read_stat(ident.pid)
    return (
        found is not None
        and found.state not in _EXITED_STATES
        and found.start_ticks == ident.start_ticks
    )


def _open_pidfd(ident: ProcessIdentity, *, zombie_ok: bool) -> int | None:
    """A pidfd that surely names `ident`, or None: opened first, identity checked after."""
    if ident.boot_id != current_boot_id() or not 0 < ident.pid <= PID_MAX_LIMIT:
        return None
    try:
        fd = os.pidfd_open(ident.pid)
    except ProcessLookupError:
        return None
    found = _read_stat(ident.pid)
    same = found is not None and found.start_ticks == ident.start_ticks
    if not same or (found is not None and found.state in _EXITED_STATES and not zombie_ok):
        os.close(fd)
        return None
    return fd


# -- exit status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitStatus:
    """How the simulation ended; both None means nobody recorded it (the keeper was killed)."""

    exit_code: int | None
    exit_signal: int | None

    @property
    def known(self) -> bool:
        """False for the 'exit status unknown' value."""
        return self.exit_code is not None or self.exit_signal is not None


UNKNOWN_EXIT = ExitStatus(None, None)


def decode_shell_status(rc: int) -> ExitStatus:
    """Read sh's `$?`: 128+N with N a signal number means killed by N, else an exit code.

    Ambiguous by nature: a program that exits with 143 by itself reads as killed by SIGTERM.
    """
    if rc > 128 and (rc - 128) in signal.valid_signals():
        return ExitStatus(None, rc - 128)
    return ExitStatus(rc, None)


def _read_exit_file(record_dir: Path) -> ExitStatus | None:
    """The recorded status, or None while it is absent or incomplete (a line with its newline)."""
    try:
        data = (record_dir / EXIT_FILE).read_bytes()
    except OSError:
        return None
    match = _EXIT_TEXT.match(data)
    if match is None or int(match.group(1)) > 255:
        return None
    return decode_shell_status(int(match.group(1)))


# -- what the daemon stores and uses ------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRecord:
    """What the database keeps so that a restarted daemon can find the run again."""

    pid: int
    pgid: int
    start_ticks: int
    boot_id: str
    keeper_pid: int
    keeper_start_ticks: int

    @property
    def sim_identity(self) -> ProcessIdentity:
        """The simulation (leader of the run's group) as an identity."""
        return ProcessIdentity(self.pid, self.start_ticks, self.boot_id)

    @property
    def keeper_identity(self) -> ProcessIdentity:
        """The keeper as an identity."""
        return ProcessIdentity(self.keeper_pid, self.keeper_start_ticks, self.boot_id)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one run."""

    run_id: str
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    record_dir: Path


class RunHandle(Protocol):
    """A started run as the daemon loop sees it, whatever runs it."""

    record: ProcessRecord

    def fileno(self) -> int:
        """Readable once the run's keeper (hence the simulation) has ended; for selectors."""
        ...

    def exit_status(self) -> ExitStatus | None:
        """None while running; then the recorded status (both fields None: unknown)."""
        ...

    def signal_group(self, sig: int) -> bool:
        """Signal the run's process group if it is verifiably the run's; False if it is gone."""
        ...

    def group_alive(self) -> bool:
        """True while any live process is left in the run's group."""
        ...

    def close(self) -> None:
        """Release what the handle holds (file descriptors); idempotent."""
        ...


@dataclass(frozen=True)
class Recovered:
    """The outcome of looking for a run after a restart.

    `handle` set: something of the run may still be alive. Without `lost` it is the adopted,
    running run. With `lost` (the keeper was killed) its exit_status() is UNKNOWN_EXIT at once
    and it serves to stop and watch what is left of the group.
    `exit` set: the run ended while nobody watched and the keeper recorded how.
    `lost` set: why the status cannot be known, in words. `never_started` tells the one case
    in which launching again is safe (no simulation was ever started from `record_dir`).
    """

    handle: RunHandle | None = None
    exit: ExitStatus | None = None
    lost: str | None = None
    record: ProcessRecord | None = None
    never_started: bool = False


class Backend(Protocol):
    """Starts runs and finds them again; the daemon loop knows nothing else about processes."""

    def launch(self, spec: LaunchSpec) -> RunHandle:
        """Start a run; raises LaunchError with words a person can act on."""
        ...

    def recover(
        self, record_dir: Path, record: ProcessRecord | None, *, run_id: str | None = None
    ) -> Recovered:
        """Find a run again (record None: the daemon died mid-launch, look at the files).

        `run_id` only labels log lines.
        """
        ...


# -- small helpers ------------------------------------------------------------------------------


def _readable(fd: int, timeout: float) -> bool:
    # poll, not select: a daemon with many runs holds more than FD_SETSIZE descriptors.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _reap(pidfd: int) -> os.waitid_result | None:
    """Reap the process if it is our child (no zombie left); not our child is fine too."""
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _group_members_alive(pgid: int) -> bool:
    """True if some process that is not a zombie has process group `pgid`."""
    # Zombies stay in their group until reaped, and an init that does not reap (as in some
    # containers) keeps orphans' zombies forever: they must not count as alive.
    for entry in os.scandir(PROC_PATH):
        if not entry.name.isdigit():
            continue
        found = _read_stat(int(entry.name))
        if found is not None and found.pgrp == pgid and found.state not in _EXITED_STATES:
            return True
    return False


_group_pidfd_signals: bool | None = None  # PIDFD_SIGNAL_PROCESS_GROUP works (found on first use)


def _pidfd_group_signal(pidfd: int, sig: int) -> bool | None:
    """Signal the group the pidfd's process leads. True sent, False gone, None not supported."""
    global _group_pidfd_signals
    if _group_pidfd_signals is False:
        return None
    try:
        signal.pidfd_send_signal(pidfd, sig, None, _PIDFD_SIGNAL_PROCESS_GROUP)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno != errno.EINVAL or _group_pidfd_signals:
            raise
        _group_pidfd_signals = False  # kernel older than 6.9
        return None
    _group_pidfd_signals = True
    return True


def _leader_is_ours(ident: ProcessIdentity) -> bool:
    """The group's leader still exists (zombie or not) with the recorded start time."""
    if ident.boot_id != current_boot_id():
        return False
    found = _read_stat(ident.pid)
    # While the leader exists, even as a zombie, its pid cannot be reused as a group id.
    return found is not None and found.start_ticks == ident.start_ticks


def _identity_from_file(path: Path, boot_id: str) -> ProcessIdentity | None:
    try:
        pid, ticks = parse_stat_line(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return ProcessIdentity(pid, ticks, boot_id)


def _read_boot_id_file(record_dir: Path) -> str | None:
    try:
        return (record_dir / BOOT_ID_FILE).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def process_age_seconds(start_ticks: int) -> float:
    """How long ago a process with this start time (clock ticks since boot) started.

    Both ends are read off the kernel's boot clock, so a wall-clock jump does not change it.
    """
    return _process_age_seconds(start_ticks)


def _process_age_seconds(start_ticks: int) -> float:
    uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _fd_at_least(fd: int, minimum: int) -> int:
    """`fd` moved to a number >= minimum (the spawn's dup2 targets are 0-3); closes it on error."""
    if fd >= minimum:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)
    finally:
        os.close(fd)


def _open_log(path: Path) -> tuple[int, int]:
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


def _pipe(
    ours: contextlib.ExitStack, theirs: contextlib.ExitStack, *, child_writes: bool
) -> tuple[int, int]:
    """A pipe to the keeper: (our end, its end), each closed by the given stack."""
    read_end, write_end = os.pipe()
    mine, child = (read_end, write_end) if child_writes else (write_end, read_end)
    ours.callback(os.close, mine)
    child = _fd_at_least(child, SPAWN_FIRST_FREE_FD)
    theirs.callback(os.close, child)
    return mine, child


def _inheritable_fds(keep: int) -> list[int]:
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


def _exec_problem(path: Path) -> str | None:
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
        problem = _exec_problem(path)
        if problem is not None:
            where = "" if os.path.isabs(name) else f" (relative to {cwd})"
            raise LaunchError(f"'{name}'{where} {problem}")
        return str(path)
    search = env.get("PATH")
    refused = []
    for entry in (search if search is not None else os.defpath).split(":"):
        # An empty PATH entry means the working directory (POSIX).
        path = cwd / entry / name if entry else cwd / name
        problem = _exec_problem(path)
        if problem is None:
            return str(path)
        if problem != "does not exist":
            refused.append(f"{path} {problem}")
    if refused:
        raise LaunchError(f"command '{name}' cannot be run: " + "; ".join(refused))
    where = f"PATH={search}" if search is not None else f"the default PATH {os.defpath}"
    raise LaunchError(f"command '{name}' not found on {where}")


def _log_tail(path: Path, start: int) -> str:
    """The last lines written to the log since offset `start`, on one line."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, end - LOG_TAIL_BYTES))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:])


def _read_report(fd: int, timeout: float) -> tuple[str | None, str]:
    """The first line the keeper side writes to the launch pipe: (line, "") or (None, why)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, f"did not report the simulation's start within {timeout:g} s"
        if not _readable(fd, remaining):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None, KEEPER_ENDED
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace"), ""


# -- the local backend ----------------------------------------------------------------------------


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
            if not _readable(fd, 0):
                return None
            reaped = _reap(fd)  # our child (launched by this process): no zombie; not ours: None
        status = _read_exit_file(self._record_dir)
        if status is None and reaped is not None and reaped.si_code == os.CLD_EXITED:
            # The keeper could not write its record (disk full, record dir gone) but ended by
            # itself, and it exits with the simulation's $?: we are its parent and saw that.
            status = decode_shell_status(reaped.si_status)
            log.warning("exit_record_missing", run_id=self.run_id, keeper_status=reaped.si_status)
        self._status = status if status is not None else UNKNOWN_EXIT
        if status is None:
            log.warning(
                "keeper_lost",
                run_id=self.run_id,
                keeper_pid=self.record.keeper_pid,
                pid=self.record.pid,
            )
        else:
            log.info(
                "run_process_ended",
                run_id=self.run_id,
                pid=self.record.pid,
                exit_code=status.exit_code,
                exit_signal=status.exit_signal,
            )
        return self._status

    def _group_signal(self, sig: int) -> bool | None:
        """Send `sig` to the group: True sent, False gone, None refused (not verifiably ours)."""
        if self._sim_pidfd is not None:
            sent = _pidfd_group_signal(self._sim_pidfd, sig)
            if sent is not None:
                return sent
        # No pidfd (the simulation was gone before one could be opened) or an old kernel: a
        # plain killpg, only while the leader still exists with its recorded start time.
        if not _leader_is_ours(self.record.sim_identity):
            return None
        try:
            os.killpg(self.record.pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, sig: int) -> bool:
        """Signal the run's group if verifiably the run's; False if gone or not ours (logged)."""
        self._open_fd()
        try:
            sent = self._group_signal(sig)
        except PermissionError as exc:
            log.warning(
                "signal_failed",
                run_id=self.run_id,
                pgid=self.record.pgid,
                signal=_signal_name(sig),
                error=str(exc),
            )
            return False
        if sent is None:
            log.warning(
                "signal_refused",
                run_id=self.run_id,
                pgid=self.record.pgid,
                signal=_signal_name(sig),
                why="the group can no longer be verified as this run's",
            )
            return False
        if sent:
            log.info(
                "signal_sent", run_id=self.run_id, pgid=self.record.pgid, signal=_signal_name(sig)
            )
        else:
            log.debug("signal_group_gone", run_id=self.run_id, pgid=self.record.pgid)
        return sent

    def group_alive(self) -> bool:
        """True while a live process is left in the run's group (EPERM counts as alive)."""
        self._open_fd()
        try:
            present = self._group_signal(0)
        except PermissionError:
            present = True
        # Signal 0 also "reaches" zombies; only a look at the members tells them apart. The
        # group still exists here, so its number cannot have been reused meanwhile.
        return bool(present) and _group_members_alive(self.record.pgid)

    def close(self) -> None:
        """Close the pidfds (the processes are not touched)."""
        for fd in (self._fd, self._sim_pidfd):
            if fd is not None:
                os.close(fd)
        self._fd = None
        self._sim_pidfd = None


class LocalBackend:
    """Runs simulations on this machine under a per-run sh keeper."""

    def __init__(
        self,
        *,
        report_timeout: float = LAUNCH_REPORT_TIMEOUT,
        setsid_path: str | None = None,
    ) -> None:
        """`setsid_path`: util-linux setsid (default: found on the daemon's PATH)."""
        self.report_timeout = report_timeout
        found = setsid_path or shutil.which("setsid") or SETSID_FALLBACK_PATH
        self.setsid_path = os.path.abspath(found)

    # -- launch --

    def launch(self, spec: LaunchSpec) -> LocalRunHandle:
        """Start the run under its keeper; returns once the simulation's pid is known."""
        cwd, argv = self._check_spec(spec)
        record_dir = spec.record_dir.absolute()
        with contextlib.ExitStack() as ours:
            with contextlib.ExitStack() as theirs:  # the keeper's ends: closed once it has them
                try:
                    self._prepare_record_dir(record_dir, spec.run_id)
                    log_fd, log_start = _open_log(spec.log_path.absolute())
                    theirs.callback(os.close, log_fd)
                    report, report_child = _pipe(ours, theirs, child_writes=True)
                    _go, go_child = _pipe(ours, theirs, child_writes=False)
                except OSError as exc:
                    raise LaunchError(f"cannot prepare the run's files: {exc}") from exc
                keeper_pid = self._spawn(
                    spec, record_dir, cwd, argv, (log_fd, report_child, go_child)
                )
            # Now only the keeper side holds the report pipe's write end: EOF means it is gone.
            try:
                keeper_fd = os.pidfd_open(keeper_pid)  # our unreaped child: surely the keeper
            except OSError as exc:
                os.killpg(keeper_pid, signal.SIGKILL)
                os.waitpid(keeper_pid, 0)
                raise LaunchError(f"cannot watch the run's keeper: {exc}") from exc
            try:
                line, why = _read_report(report, self.report_timeout)
                if line is None:
                    grace = KEEPER_EXIT_GRACE if why == KEEPER_ENDED else 0.0
                    raise self._abort(
                        spec, record_dir, keeper_pid, keeper_fd, why, log_start, grace
                    )
                # Leaving the `with` closes the go pipe: the simulation may exec.
                return self._handle_for(spec, record_dir, keeper_pid, keeper_fd, line, log_start)
            except BaseException:
                os.close(keeper_fd)
                raise

    def _check_spec(self, spec: LaunchSpec) -> tuple[Path, list[str]]:
        if not spec.argv:
            raise LaunchError("the command is empty")
        cwd = spec.cwd.absolute()
        if not cwd.is_dir():
            raise LaunchError(f"working directory {cwd} does not exist or is not a directory")
        program = resolve_program(spec.argv[0], spec.env, cwd)
        if _exec_problem(Path(self.setsid_path)) is not None:
            raise LaunchError(f"util-linux setsid not found at {self.setsid_path}")
        dropped = sorted(k for k in spec.env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
        if dropped:
            # sh passes on only variables whose names are shell identifiers.
            log.warning("env_names_dropped", run_id=spec.run_id, names=dropped)
        return cwd, [program, *spec.argv[1:]]

    def _prepare_record_dir(self, record_dir: Path, run_id: str) -> None:
        record_dir.mkdir(parents=True, exist_ok=True)
        boot_id = _read_boot_id_file(record_dir)
        keeper = _identity_from_file(record_dir / KEEPER_FILE, boot_id) if boot_id else None
        if keeper is not None and is_same_process(keeper):
            # Never start a run twice: an earlier launch from here is still going.
            raise LaunchError(
                f"an earlier keeper for this run is still running (pid {keeper.pid}); "
                "refusing to start the run twice"
            )
        for name in RECORD_FILES:
            (record_dir / name).unlink(missing_ok=True)
        (record_dir / BOOT_ID_FILE).write_text(current_boot_id() + "\n", encoding="ascii")
        log.debug("record_dir_prepared", run_id=run_id, record_dir=str(record_dir))

    def _spawn(
        self,
        spec: LaunchSpec,
        record_dir: Path,
        cwd: Path,
        argv: list[str],
        fds: tuple[int, int, int],
    ) -> int:
        """posix_spawn the keeper with fds (log, report pipe, go pipe) as 1+2, 3 and 4."""
        log_fd, report_fd, go_fd = fds
        args = [SH_PATH, "-c", KEEPER_SCRIPT, KEEPER_ARGV0, str(record_dir)]
        args += [self.setsid_path, str(cwd), *argv]
        actions: list[tuple[int, int] | tuple[int, int, int] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
            (os.POSIX_SPAWN_DUP2, report_fd, 3),
            (os.POSIX_SPAWN_DUP2, go_fd, 4),
        ]
        # posix_spawn has no close_fds: close what is inheritable by name (systemd's
        # LISTEN_FDS sockets, a library's descriptors); close-on-exec ones close themselves.
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds(SPAWN_FIRST_FREE_FD - 1)]
        try:
            return os.posix_spawn(
                SH_PATH,
                args,
                dict(spec.env),
                file_actions=actions,
                setsid=True,
                setsigdef=_DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except (OSError, ValueError) as exc:
            raise LaunchError(f"could not start the run's keeper ({SH_PATH}): {exc}") from exc

    def _handle_for(
        self,
        spec: LaunchSpec,
        record_dir: Path,
        keeper_pid: int,
        keeper_fd: int,
        line: str,
        log_start: int,
    ) -> LocalRunHandle:
        try:
            sim = _parse_stat(line)
        except ValueError:
            why = f"reported garbage instead of the simulation's pid: {line[:80]!r}"
            raise self._abort(spec, record_dir, keeper_pid, keeper_fd, why, log_start) from None
        if not (sim.ppid == keeper_pid and sim.pgrp == sim.pid == sim.session):
            # setsid forked (not util-linux, or run by a group leader): the keeper would be
            # waiting for the wrong process and report the run over at once.
            why = f"started the simulation outside its own session (setsid {self.setsid_path})"
            raise self._abort(spec, record_dir, keeper_pid, keeper_fd, why, log_start)
        keeper_stat = _read_stat(keeper_pid)  # our unreaped child: present, maybe a zombie
        if keeper_stat is None:
            why = "vanished although it was not reaped"
            raise self._abort(spec, record_dir, keeper_pid, keeper_fd, why, log_start)
        boot_id = current_boot_id()
        record = ProcessRecord(
            pid=sim.pid,
            pgid=sim.pgrp,
            start_ticks=sim.start_ticks,
            boot_id=boot_id,
            keeper_pid=keeper_pid,
            keeper_start_ticks=keeper_stat.start_ticks,
        )
        # Opened after the fact but checked against the reported start time, so it names the
        # simulation or nothing (it may already have ended: then the keeper says how).
        sim_fd = _open_pidfd(record.sim_identity, zombie_ok=True)
        log.info(
            "run_launched",
            run_id=spec.run_id,
            pid=record.pid,
            pgid=record.pgid,
            keeper_pid=keeper_pid,
        )
        return LocalRunHandle(
            record,
            record_dir=record_dir,
            run_id=spec.run_id,
            keeper_pidfd=keeper_fd,
            sim_pidfd=sim_fd,
        )

    def _abort(
        self,
        spec: LaunchSpec,
        record_dir: Path,
        keeper_pid: int,
        keeper_fd: int,
        why: str,
        log_start: int,
        grace: float = 0.0,
    ) -> LaunchError:
        """Stop whatever the failed launch left (no process stays behind); the error to raise."""
        _readable(keeper_fd, grace)  # a keeper that ended by itself has the last word
        # Then its whole group goes, leftovers too. The keeper is our child and not yet reaped
        # (at worst a zombie), so its pid, hence its group id, cannot have been reused.
        try:
            os.killpg(keeper_pid, signal.SIGKILL)
            log.info("signal_sent", run_id=spec.run_id, pgid=keeper_pid, signal="SIGKILL")
        except ProcessLookupError:
            pass
        # A simulation that got as far as its own session is out of the keeper's group.
        boot_id = current_boot_id()
        sim = _identity_from_file(record_dir / SIM_FILE, boot_id)
        if sim is not None:
            self._kill_group_of(sim, spec.run_id, "the launch failed")
        _readable(keeper_fd, KEEPER_REAP_TIMEOUT)
        result = _reap(keeper_fd)
        how = ""
        if result is not None and result.si_code == os.CLD_EXITED:
            how = f" (keeper exit code {result.si_status})"
        elif result is not None:
            how = f" (keeper killed by {_signal_name(result.si_status)})"
        tail = _log_tail(spec.log_path.absolute(), log_start)
        message = f"the run's keeper {why}{how}"
        if tail:
            message += f"; its log says: {tail}"
        log.warning("launch_failed", run_id=spec.run_id, error=message)
        return LaunchError(message)

    # -- recover --

    def recover(
        self, record_dir: Path, record: ProcessRecord | None, *, run_id: str | None = None
    ) -> Recovered:
        """Find a run again after a restart, from its saved record or from its files alone."""
        record_dir = record_dir.absolute()
        if record is None:
            return self._recover_from_files(record_dir, run_id)
        return self._recover_record(record_dir, record, run_id)

    def _recover_record(
        self, record_dir: Path, record: ProcessRecord, run_id: str | None
    ) -> Recovered:
        boot_id = current_boot_id()
        # A recorded exit is the truth even from an earlier boot: read it before the boot id.
        status = _read_exit_file(record_dir)
        if status is None and record.boot_id != boot_id:
            why = f"{LOST_MACHINE_RESTARTED} (boot id {record.boot_id}, now {boot_id})"
            log.warning("run_lost", run_id=run_id, why=why)
            return Recovered(lost=why, record=record)
        if status is not None:
            log.info(
                "run_ended_while_away",
                run_id=run_id,
                exit_code=status.exit_code,
                exit_signal=status.exit_signal,
            )
            return Recovered(exit=status, record=record)
        keeper_fd = _open_pidfd(record.keeper_identity, zombie_ok=False)
        sim_fd = _open_pidfd(record.sim_identity, zombie_ok=True)
        if keeper_fd is not None:
            log.info("run_adopted", run_id=run_id, pid=record.pid, keeper_pid=record.keeper_pid)
            handle = LocalRunHandle(
                record,
                record_dir=record_dir,
                run_id=run_id,
                keeper_pidfd=keeper_fd,
                sim_pidfd=sim_fd,
            )
            return Recovered(handle=handle, record=record)
        status = _read_exit_file(record_dir)  # the keeper may have finished since the first look
        if status is not None:
            if sim_fd is not None:
                os.close(sim_fd)
            return Recovered(exit=status, record=record)
        why = f"{LOST_KEEPER_KILLED} (keeper pid {record.keeper_pid})"
        log.warning("run_lost", run_id=run_id, why=why, simulation_alive=sim_fd is not None)
        if sim_fd is None:
            return Recovered(lost=why, record=record)
        handle = LocalRunHandle(
            record, record_dir=record_dir, run_id=run_id, keeper_pidfd=None, sim_pidfd=sim_fd
        )
        return Recovered(handle=handle, lost=why, record=record)

    def _recover_from_files(self, record_dir: Path, run_id: str | None) -> Recovered:
        boot_id = _read_boot_id_file(record_dir)
        if boot_id is None:
            return Recovered(lost=f"{LOST_NEVER_STARTED} (no launch recorded)", never_started=True)
        if boot_id != current_boot_id():
            status = _read_exit_file(record_dir)
            if status is not None:
                return Recovered(exit=status)
            why = f"{LOST_MACHINE_RESTARTED} (boot id {boot_id}, now {current_boot_id()})"
            # Nothing from that boot runs any more; whether the simulation ever ran is unknown.
            return Recovered(lost=why, never_started=not (record_dir / SIM_FILE).exists())
        sim = _identity_from_file(record_dir / SIM_FILE, boot_id)
        keeper = _identity_from_file(record_dir / KEEPER_FILE, boot_id)
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
        self, record_dir: Path, keeper: ProcessIdentity | None, run_id: str | None
    ) -> Recovered:
        """No simulation ever reported from here: say so, or wait for a keeper still starting."""
        if keeper is not None and is_same_process(keeper):
            age = _process_age_seconds(keeper.start_ticks)
            if age < self.report_timeout:
                # Not blocking here: the caller looks again later.
                return Recovered(lost=f"starting (keeper pid {keeper.pid}, {age:.1f} s old)")
            self._kill_stuck_keeper(keeper, run_id)
            why = f"{LOST_NEVER_STARTED} (keeper pid {keeper.pid} never reported; killed)"
            return Recovered(lost=why, never_started=True)
        status = _read_exit_file(record_dir)
        if status is not None:
            # The keeper ran and recorded a failure before the simulation could start.
            return Recovered(exit=status)
        seen = "its keeper started but ended" if keeper is not None else "no keeper started"
        return Recovered(lost=f"{LOST_NEVER_STARTED} ({seen})", never_started=True)

    def _kill_stuck_keeper(self, keeper: ProcessIdentity, run_id: str | None) -> None:
        # The keeper leads its own group: this stops it and a setsid not yet done.
        self._kill_group_of(keeper, run_id, "the keeper never reported the simulation")

    @staticmethod
    def _kill_group_of(leader: ProcessIdentity, run_id: str | None, why: str) -> None:
        """SIGKILL the group `leader` leads, if `leader` is still that process."""
        fd = _open_pidfd(leader, zombie_ok=True)
        if fd is None:
            return
        try:
            sent = _pidfd_group_signal(fd, signal.SIGKILL)
            if sent is None:
                os.killpg(leader.pid, signal.SIGKILL)  # old kernel: identity checked just above
                sent = True
        except ProcessLookupError:
            sent = False
        finally:
            os.close(fd)
        if sent:
            log.warning("signal_sent", run_id=run_id, pgid=leader.pid, signal="SIGKILL", why=why)
