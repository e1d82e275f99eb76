"""The per-run keeper: a tiny POSIX sh (dash) process that is the simulation's parent.

It writes the simulation's exit status to a file, so the status survives the daemon being
restarted or SIGKILLed (a process that is not your child cannot be waited for). The chain is

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
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from supervisor.executors.base import ExitStatus, ProcessIdentity
from supervisor.executors.local.identity import parse_stat_line

SH_PATH = "/bin/sh"
KEEPER_FILE = "keeper"
SIM_FILE = "sim"
EXIT_FILE = "exit"
BOOT_ID_FILE = "boot_id"
RECORD_FILES = (KEEPER_FILE, SIM_FILE, EXIT_FILE, BOOT_ID_FILE)
_EXIT_TEXT = re.compile(rb"\A([0-9]{1,3})\n\Z")


# $1 record dir, $2 setsid, $3 working dir, $4 the cgroup.procs file of the run's memory cgroup
# (empty: no cap), then the simulation's argv (argv[0] resolved).
# Exit code 125: the keeper could not write its records or enter the working directory; 124:
# the simulation could not enter its memory cgroup (it never runs uncapped).
# The simulation enters the cgroup itself, after setsid and before exec, so everything it forks
# is born inside while the keeper stays outside: a cgroup kill never takes the exit status.
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
_runsup_c=$4
shift 4
"$_runsup_s" /bin/sh -c '[ -z "$2" ] || printf "0\\n" >"$2" || exit 124
read -r _runsup_l </proc/$$/stat
printf "%s\\n" "$_runsup_l" >"$1/sim" || exit 125
trap "" PIPE
printf "%s\\n" "$_runsup_l" >&3 2>/dev/null
trap - PIPE
read -r _runsup_l <&4
shift 2
exec "$@" 3>&- 4<&-' runsup-sim "$_runsup_d" "$_runsup_c" "$@"
_runsup_rc=$?
printf '%s\\n' "$_runsup_rc" >"$_runsup_d/exit"
exit "$_runsup_rc"
"""
KEEPER_ARGV0 = "runsup-keeper"
EXIT_NO_CGROUP = 124


def decode_shell_status(rc: int) -> ExitStatus:
    """Read sh's `$?`: 128+N with N a signal number means killed by N, else an exit code.

    Ambiguous by nature: a program that exits with 143 by itself reads as killed by SIGTERM.
    """
    if rc > 128 and (rc - 128) in signal.valid_signals():
        return ExitStatus(None, rc - 128)
    return ExitStatus(rc, None)


def read_exit_file(record_dir: Path) -> ExitStatus | None:
    """The recorded status, or None while it is absent or incomplete (a line with its newline)."""
    try:
        data = (record_dir / EXIT_FILE).read_bytes()
    except OSError:
        return None
    match = _EXIT_TEXT.match(data)
    if match is None or int(match.group(1)) > 255:
        return None
    return decode_shell_status(int(match.group(1)))


def identity_from_file(path: Path, boot_id: str) -> ProcessIdentity | None:
    """The process whose stat line the keeper wrote to `path`; None if absent or garbage."""
    try:
        pid, ticks = parse_stat_line(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return ProcessIdentity(pid, ticks, boot_id)


def read_boot_id_file(record_dir: Path) -> str | None:
    """The boot id the daemon wrote before the launch; None if absent."""
    try:
        return (record_dir / BOOT_ID_FILE).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
