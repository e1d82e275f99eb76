"""The local stand-in of a running Slurm job (SPEC section 9).

A RUNNING cluster run's `pid` and `pgid` name a local process group that stands for the job, so
programs written for local runs keep working: `killpg(pgid, 0)` succeeds while the job lives;
SIGTERM, SIGINT or SIGHUP sent to the group reach the job's processes as that signal (through
`scancel --full --signal=SIG`: without --full a batch script gets nothing); a SIGKILL of the
group cancels the job.

Two POSIX sh processes per job:

    daemon --posix_spawn(setsid)--> watcher sh --fork--> setsid --exec--> leader sh
                                                                            `-- sleep (waited)

- The *leader* leads a session and process group of its own (pid == pgid: the stand-in). It
  traps TERM, INT and HUP and forwards each to the job; scancel runs under `setsid`, out of the
  group, so a second signal to the group cannot kill a forward half done. It blocks reading a
  FIFO (no polling, no child: nothing to do per job per second, nothing left in the group).
- The *watcher* (its own session, outside the group) waits for the leader in the foreground. If
  the leader dies without having been told that the job ended, something killed it with a
  signal it cannot trap (SIGKILL): the watcher writes `killed` and cancels the job with a plain
  scancel (Slurm's cancel: SIGTERM, SIGKILL after KillWait; `scancel --signal=KILL` is the same
  thing to Slurm, not an instant kill).
- The daemon ends a stand-in by writing `ended` and a line to the leader's FIFO `wake`.
- A *checker* (the watcher's background child, outside the group) asks the cluster about the
  job every `check_seconds`: a job the cluster no longer knows, or a controller that could not
  be asked for `unreachable_seconds`, ends the stand-in the same way (`ended` says why), so a
  daemon gone for good, or a cluster gone, leaves no stand-in waiting for ever. A job the
  cluster knows (queued, running, or ended and not yet purged) is the daemon's to settle.

Files in the record directory:

    standin   the leader's /proc/<pid>/stat line, written first thing (its identity)
    signals   one line per signal forwarded to the job (TERM, INT or HUP)
    wake      a FIFO the leader reads; a line written after `ended` makes it exit
    ended     written by the daemon (the job has ended) or the checker (no cluster knows
              the job): the stand-in may go
    executor  the name of the executor that started it (runs dirs may be shared)
    boot_id   the boot the stand-in was started in (written by the daemon before spawning)
    killed    written by the watcher: the leader died untold (its sh status); job cancelled
    standin.log   what the two shells and scancel printed

A daemon that was down finds its stand-ins again from `standin` (`find_standin`), and one whose
leader is gone without `ended` was killed even if the watcher was killed too (`standin_state`).
After a reboot the pid means nothing (the boot id differs): the job goes on and the daemon
starts a new stand-in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from supervisor.errors import LaunchError
from supervisor.executors.base import ProcessIdentity
from supervisor.executors.local.identity import current_boot_id, is_same_process, parse_stat_line

log = structlog.get_logger(__name__)

SH_PATH = "/bin/sh"
SETSID_FALLBACK_PATH = "/usr/bin/setsid"
STANDIN_FILE = "standin"
SIGNALS_FILE = "signals"
ENDED_FILE = "ended"
WAKE_FIFO = "wake"
FIFO_MODE = 0o600
KILLED_FILE = "killed"
LOG_FILE = "standin.log"
BOOT_ID_FILE = "boot_id"
EXECUTOR_FILE = "executor"
LEADER_ARGV0 = "runsup-standin"
WATCHER_ARGV0 = "runsup-standin-watch"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# How long the leader may take to write its identity before the start fails.
START_TIMEOUT_SECONDS = 5.0
# How long `end_standin` waits for the leader to be gone.
END_TIMEOUT_SECONDS = 5.0
# How often a stand-in's checker asks the cluster whether it still knows the job, and how long
# the controller may be unreachable before the stand-in gives its job up for gone.
CHECK_SECONDS = 60.0
UNREACHABLE_SECONDS = 24 * 3600.0
POLL_SECONDS = 0.02
LOG_FILE_MODE = 0o640
# As processes.py: everything back to default in the shells, or a signal the daemon ignores
# would stay ignored and could not be trapped.
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

# $1 record dir, $2 job id, $3 scancel, $4 setsid. Variables carry a prefix (they would be
# exported into scancel's environment if the daemon's environment had them).
# - The leader has no child to wait for: it blocks in `read` on the `wake` FIFO, which it holds
#   open read-write (so a writer never blocks and a line is never lost). A trapped signal
#   interrupts the read at once; the trap runs and the loop reads again. A SIGKILLed leader
#   leaves no orphan in the group (an orphan would keep `killpg(pgid, 0)` true).
# - The daemon ends it by writing `ended`, then a line to `wake`.
# - A signal reaches a running job's processes (--state=RUNNING: scancel --signal to a job that
#   waits again, requeued, would retry "can not be altered now" until it times out); a job
#   waiting again has no processes, so the signal cancels it (--state=PENDING), as any of
#   TERM, INT, HUP from another program means a cancel (SPEC section 6).
LEADER_SCRIPT = """_rs_d=$1 _rs_j=$2 _rs_c=$3 _rs_s=$4
_rs_sig() {
  [ ! -e "$_rs_d/ended" ] || exit 0
  printf '%s\\n' "$1" >>"$_rs_d/signals"
  "$_rs_s" "$_rs_c" --full --signal="$1" --state=RUNNING "$_rs_j" 3<&-
  "$_rs_s" "$_rs_c" --state=PENDING "$_rs_j" 3<&-
}
trap '_rs_sig TERM' TERM
trap '_rs_sig INT' INT
trap '_rs_sig HUP' HUP
exec 3<>"$_rs_d/wake" || exit 125
read -r _rs_l </proc/$$/stat
printf '%s\\n' "$_rs_l" >"$_rs_d/standin" || exit 125
while [ ! -e "$_rs_d/ended" ]; do
  read -r _rs_l <&3
done
"""
# $1 record dir, $2 job id, $3 scancel, $4 setsid, $5 the leader's script, $6 squeue, $7 seconds
# between checks, $8 seconds of unreachable controller. The leader runs in the foreground (a
# background `&` job would start with SIGINT ignored, and a non-interactive sh cannot trap a
# signal ignored at entry); util-linux setsid, run by a process that does not lead a group,
# calls setsid() without forking, so the pid the watcher waits for is the leader.
# - The checker runs in the background, in the watcher's group (not the stand-in's). `squeue -j`
#   answers a state for a job it knows, "Invalid job id" for one it does not; anything else is
#   an unreachable controller (or no configuration). It writes `ended`, then a line to `wake`
#   through a read-write open (never blocks, even with the leader gone).
# - Once the leader is gone the watcher ends its whole group (the checker and its sleep) with
#   SIGTERM, ignoring it itself.
WATCHER_SCRIPT = """_rs_d=$1 _rs_j=$2 _rs_c=$3
_rs_check() {
  _rs_seen=$(date +%s)
  while sleep "$7"; do
    [ ! -e "$_rs_d/ended" ] || exit 0
    _rs_out=$("$6" -h -t all -j "$_rs_j" -o %T 2>&1) && [ -n "$_rs_out" ] \\
      && _rs_seen=$(date +%s) && continue
    case $_rs_out in
      *"Invalid job id"*|"") _rs_why="no cluster knows job $_rs_j" ;;
      *) _rs_away=$(($(date +%s) - _rs_seen))
         [ "$_rs_away" -ge "$8" ] || continue
         _rs_why="the controller did not answer for $_rs_away s: $_rs_out" ;;
    esac
    printf '%s\\n' "$_rs_why" >"$_rs_d/ended"
    printf 'end\\n' 1<>"$_rs_d/wake"
    exit 0
  done
}
_rs_check "$@" </dev/null &
"$4" /bin/sh -c "$5" runsup-standin "$1" "$2" "$3" "$4"
_rs_rc=$?
trap '' TERM
kill -TERM 0
[ ! -e "$_rs_d/ended" ] || exit 0
printf '%s\\n' "$_rs_rc" >"$_rs_d/killed"
exec "$_rs_c" "$_rs_j"
"""


class StandInState(StrEnum):
    """What became of a stand-in."""

    ALIVE = "alive"  # the leader runs: the group stands for the job
    ENDED = "ended"  # ended by the daemon (the job had ended)
    KILLED = "killed"  # the leader died untold (SIGKILL): the job must be cancelled
    LOST = "lost"  # started in another boot: the job goes on, start a new stand-in


@dataclass(frozen=True)
class StandIn:
    """A job's stand-in: the leader's identity (pid == pgid) and its record directory."""

    job_id: str
    record_dir: Path
    leader: ProcessIdentity
    watcher_pid: int | None = None  # our child (to reap); None once found again after restart

    @property
    def pid(self) -> int:
        """The leader's pid: the run's `pid` column."""
        return self.leader.pid

    @property
    def pgid(self) -> int:
        """The stand-in's process group: the run's `pgid` column (== pid)."""
        return self.leader.pid


def _setsid_path(env: Mapping[str, str]) -> str:
    return shutil.which("setsid", path=env.get("PATH")) or SETSID_FALLBACK_PATH


def start_standin(
    job_id: str,
    record_dir: Path,
    env: Mapping[str, str],
    *,
    scancel: str = "scancel",
    squeue: str = "squeue",
    executor: str = "",
    timeout: float = START_TIMEOUT_SECONDS,
    check_seconds: float = CHECK_SECONDS,
    unreachable_seconds: float = UNREACHABLE_SECONDS,
) -> StandIn:
    """Start the stand-in of a running job; `env` reaches scancel and squeue (SLURM_CONF,
    PATH)."""
    record_dir.mkdir(parents=True, exist_ok=True)
    for stale in (STANDIN_FILE, ENDED_FILE, KILLED_FILE, WAKE_FIFO):
        (record_dir / stale).unlink(missing_ok=True)
    os.mkfifo(record_dir / WAKE_FIFO, FIFO_MODE)
    (record_dir / BOOT_ID_FILE).write_text(current_boot_id() + "\n")
    (record_dir / EXECUTOR_FILE).write_text(executor + "\n")
    scancel_path = shutil.which(scancel, path=env.get("PATH")) or scancel
    squeue_path = shutil.which(squeue, path=env.get("PATH")) or squeue
    args = [SH_PATH, "-c", WATCHER_SCRIPT, WATCHER_ARGV0, str(record_dir), job_id]
    args += [scancel_path, _setsid_path(env), LEADER_SCRIPT, squeue_path]
    args += [str(max(1, round(check_seconds))), str(max(1, round(unreachable_seconds)))]
    log_fd = os.open(record_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
    try:
        watcher_pid = os.posix_spawn(
            SH_PATH,
            args,
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT_SIGNALS,
            setsigmask=(),
        )
    except (OSError, ValueError) as exc:
        raise LaunchError(f"could not start the stand-in of job {job_id}: {exc}") from exc
    finally:
        os.close(log_fd)
    leader = _wait_for_leader(record_dir, watcher_pid, timeout)
    if leader is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watcher_pid, signal.SIGKILL)
        reap_watcher(watcher_pid, block=True)
        raise LaunchError(f"the stand-in of job {job_id} did not start within {timeout:g} s")
    log.info("slurm_standin_started", job_id=job_id, pid=leader.pid)
    return StandIn(job_id=job_id, record_dir=record_dir, leader=leader, watcher_pid=watcher_pid)


def _wait_for_leader(record_dir: Path, watcher_pid: int, timeout: float) -> ProcessIdentity | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = read_leader(record_dir)
        if leader is not None:
            return leader
        if reap_watcher(watcher_pid):
            return None  # the watcher ended before the leader wrote its identity
        time.sleep(POLL_SECONDS)
    return None


def read_leader(record_dir: Path) -> ProcessIdentity | None:
    """The leader's identity from its record (None until its line is complete)."""
    try:
        text = (record_dir / STANDIN_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    if not text.endswith("\n"):
        return None
    try:
        pid, start_ticks = parse_stat_line(text.strip())
    except ValueError:
        return None
    try:
        boot_id = (record_dir / BOOT_ID_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return ProcessIdentity(pid, start_ticks, boot_id)


def find_standin(job_id: str, record_dir: Path) -> StandIn | None:
    """A stand-in started earlier (by a daemon that since restarted); None if it never wrote
    its identity."""
    leader = read_leader(record_dir)
    return None if leader is None else StandIn(job_id=job_id, record_dir=record_dir, leader=leader)


def standin_state(standin: StandIn) -> StandInState:
    """Whether the stand-in still stands for its job, and if not, why."""
    if (standin.record_dir / ENDED_FILE).exists():
        return StandInState.ENDED
    if standin.leader.boot_id != current_boot_id():
        return StandInState.LOST
    if is_same_process(standin.leader):
        return StandInState.ALIVE
    return StandInState.KILLED


def was_killed(standin: StandIn) -> bool:
    """True when the watcher saw the leader die untold and cancelled the job."""
    return (standin.record_dir / KILLED_FILE).exists()


def forwarded_signals(record_dir: Path) -> list[str]:
    """The signals (TERM, INT, HUP) the stand-in has forwarded to its job, oldest first."""
    try:
        return (record_dir / SIGNALS_FILE).read_text().split()
    except FileNotFoundError:
        return []


def end_standin(standin: StandIn, *, timeout: float = END_TIMEOUT_SECONDS) -> bool:
    """The job has ended: make its stand-in exit. True when the leader is gone in time."""
    (standin.record_dir / ENDED_FILE).write_text("ended\n")
    _wake(standin.record_dir / WAKE_FIFO)
    deadline = time.monotonic() + timeout
    gone = False
    while time.monotonic() < deadline:
        # The group is empty only once the watcher has reaped the leader (a zombie counts).
        gone = not is_same_process(standin.leader) and not _group_exists(standin.pgid)
        if gone:
            break
        time.sleep(POLL_SECONDS)
    if standin.watcher_pid is not None:
        reap_watcher(standin.watcher_pid, block=gone)
    log.info("slurm_standin_ended", job_id=standin.job_id, pid=standin.pid, gone=gone)
    return gone


def spent_identity() -> ProcessIdentity:
    """The identity of a process group that existed and is gone: the pid and pgid of a run
    whose job was over before it was seen running (it gets no stand-in, and `killpg(pgid, 0)`
    must fail, as for any job that has ended)."""
    pid = os.posix_spawn(SH_PATH, [SH_PATH, "-c", "exit 0"], {}, setsid=True)
    try:
        # Our unreaped child: its /proc entry stays until waitpid, exited or not.
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            _, start_ticks = parse_stat_line(fh.read().strip())
    finally:
        reap_watcher(pid, block=True)
    return ProcessIdentity(pid, start_ticks, current_boot_id())


def leftover_standins(runs_dir: Path, executor: str, keep: Collection[Path]) -> list[StandIn]:
    """Stand-ins this executor started under `runs_dir` whose leader still runs, except those
    in the record dirs `keep` (the runs the daemon took on again)."""
    kept = {path.resolve() for path in keep}
    found = []
    for standin_file in runs_dir.glob(f"*/*/{STANDIN_FILE}"):
        record_dir = standin_file.parent
        try:
            owner = (record_dir / EXECUTOR_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            continue  # started by another executor, or by a daemon before this file existed
        if owner != executor or record_dir.resolve() in kept:
            continue
        standin = find_standin("", record_dir)
        if standin is not None and standin_state(standin) is StandInState.ALIVE:
            found.append(standin)
    return found


def _wake(fifo: Path) -> None:
    # Non-blocking: with no reader (the leader is gone) the open fails with ENXIO; a full pipe
    # means the leader has lines to read already.
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"end\n")
    except OSError:
        pass
    finally:
        os.close(fd)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_watcher(pid: int, *, block: bool = False) -> bool:
    """Reap our child `pid` (a stand-in's watcher) if it has exited; True when it has (or is
    no child of ours)."""
    try:
        done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid
