"""The local executor: starts runs on this machine under a keeper and finds them again."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
import weakref
from datetime import datetime
from pathlib import Path

import structlog

from supervisor.errors import CapError, LaunchError
from supervisor.executors.backoff import Backoff
from supervisor.executors.base import (
    Adopted,
    LaunchSpec,
    ProcessRecord,
    Recovery,
    RunHandle,
    RunRef,
)
from supervisor.executors.local import cgroups, foreign, pinning
from supervisor.executors.local.finding import CAP_FILE, RunFinder
from supervisor.executors.local.groupwatch import kill_group
from supervisor.executors.local.handle import LocalRunHandle, group_watch
from supervisor.executors.local.identity import (
    current_boot_id,
    is_same_process,
    open_pidfd,
    parse_stat,
    read_stat,
    readable,
    reap_status,
)
from supervisor.executors.local.keeper import (
    BOOT_ID_FILE,
    EXIT_NO_CGROUP,
    KEEPER_ARGV0,
    KEEPER_FILE,
    KEEPER_SCRIPT,
    RECORD_FILES,
    SH_PATH,
    SIM_FILE,
    identity_from_file,
    read_boot_id_file,
)
from supervisor.executors.local.keeperwatch import (
    KEEPER_POLL_MAX_SECONDS,
    KEEPER_POLL_SECONDS,
    KeeperWatch,
)
from supervisor.executors.local.means import KernelMeans, detect
from supervisor.executors.local.spawn import (
    KEEPER_ENDED,
    SPAWN_FIRST_FREE_FD,
    exec_problem,
    inheritable_fds,
    log_tail,
    make_pipe,
    open_log,
    resolve_program,
)
from supervisor.signames import signal_name

log = structlog.get_logger(__name__)

# Used when `setsid` is not on the daemon's PATH (util-linux installs it here).
SETSID_FALLBACK_PATH = "/usr/bin/setsid"
# How long the keeper may take to report the simulation's pid before the launch fails.
LAUNCH_REPORT_TIMEOUT = 5.0
# After a failed launch: how long to wait for the keeper to end by itself, then to be reaped.
KEEPER_EXIT_GRACE = 1.0
KEEPER_REAP_TIMEOUT = 2.0
# The keeper reports one /proc stat line (well under this).
REPORT_READ_BYTES = 4096
# Without pidfds, how often a failed launch looks whether its keeper (our child) has ended.
CHILD_POLL_SECONDS = 0.01

# Everything the daemon may have set to "ignore" goes back to default in the keeper: an ignored
# signal stays ignored across exec and a non-interactive sh cannot trap it (think `nohup`).
# (glibc's posix_spawn leaves its two internal signals, 32 and 33, ignored and will not let them
# be named here; a glibc program installs its own handlers for them when it needs them.)
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class LocalExecutor:
    """Runs simulations on this machine under a per-run sh keeper."""

    name = "local"
    signals_checkpoints = False  # the loop sends checkpoint_signal to the run's group
    runs_dir: Path | None = None  # the daemon's
    max_in_flight: int | None = None  # max_concurrent_runs and [resources] apply

    def __init__(
        self,
        *,
        report_timeout: float = LAUNCH_REPORT_TIMEOUT,
        setsid_path: str | None = None,
        caps: cgroups.CapSupport | None = None,
        means: KernelMeans | None = None,
    ) -> None:
        """`setsid_path`: util-linux setsid (default: found on the daemon's PATH); `caps`: how
        memory caps are enforced here (default: found out, and set up, on first need);
        `means`: what the kernel offers to watch processes (default: probed once)."""
        self.report_timeout = report_timeout
        found = setsid_path or shutil.which("setsid") or SETSID_FALLBACK_PATH
        self.setsid_path = os.path.abspath(found)
        self._caps = caps
        self.means = means if means is not None else detect()
        # Handles whose keeper only a timer can watch (adopted without pidfds): poll() looks.
        self._timed: weakref.WeakValueDictionary[str, LocalRunHandle] = (
            weakref.WeakValueDictionary()
        )

        self._looks = Backoff(KEEPER_POLL_SECONDS, KEEPER_POLL_MAX_SECONDS)
        self._next_look = 0.0  # monotonic: when poll() looks at them next

    @property
    def poll_interval(self) -> float | None:
        """None while every run's keeper has a descriptor; else when poll() looks next."""
        if not self._timed:
            return None
        return max(0.0, self._next_look - time.monotonic())

    @property
    def caps(self) -> cgroups.CapSupport:
        """What this machine offers to enforce memory caps (detected once)."""
        if self._caps is None:
            self._caps = cgroups.prepare(cgroups.detect())
            log.info(
                "memory_caps",
                version=self._caps.version.value if self._caps.version else None,
                base=str(self._caps.base) if self._caps.base else None,
                reason=self._caps.reason,
            )
        return self._caps

    # -- launch --

    def begin_launch(self, spec: LaunchSpec) -> LocalLaunch:
        """Spawn the run's keeper and return at once; the launch completes in LocalLaunch.poll."""
        cwd, argv = self._check_spec(spec)
        record_dir = spec.record_dir.absolute()
        cgroup = self._cgroup_for(spec)
        with contextlib.ExitStack() as ours:
            if cgroup is not None:
                ours.callback(cgroups.remove, cgroup, 0.0)  # until the launch owns it
            with contextlib.ExitStack() as theirs:  # the keeper's ends: closed once it has them
                try:
                    self._prepare_record_dir(record_dir, spec.run_id, spec.memory_max)
                    log_fd, log_start = open_log(spec.log_path.absolute())
                    theirs.callback(os.close, log_fd)
                    report, report_child = make_pipe(ours, theirs, child_writes=True)
                    go, go_child = make_pipe(ours, theirs, child_writes=False)
                except OSError as exc:
                    raise LaunchError(f"cannot prepare the run's files: {exc}") from exc
                procs = str(cgroup.procs_file) if cgroup is not None else ""
                with pinning.inherited_affinity(spec.cpu_ids):
                    keeper_pid = self._spawn(
                        spec, record_dir, cwd, [procs, *argv], (log_fd, report_child, go_child)
                    )
            # Now only the keeper side holds the report pipe's write end: EOF means it is gone
            # (without pidfds that EOF is how the run's end is seen: KeeperWatch "pipe").
            keeper_fd = None
            if self.means.pidfds:
                try:
                    keeper_fd = os.pidfd_open(keeper_pid)  # our unreaped child: the keeper
                except OSError as exc:
                    os.killpg(keeper_pid, signal.SIGKILL)
                    os.waitpid(keeper_pid, 0)
                    raise LaunchError(f"cannot watch the run's keeper: {exc}") from exc
            os.set_blocking(report, False)
            launch = LocalLaunch(
                self,
                spec,
                record_dir=record_dir,
                keeper_pid=keeper_pid,
                keeper_fd=keeper_fd,
                report_fd=report,
                go_fd=go,
                log_start=log_start,
                cgroup=cgroup,
            )
            ours.pop_all()  # the pipes' ends (and the cgroup) now belong to the launch
            return launch

    def _cgroup_for(self, spec: LaunchSpec) -> cgroups.RunCgroup | None:
        """The run's memory cgroup, made now; None without a cap. Never runs a cap uncapped."""
        if spec.memory_max is None:
            return None
        caps = self.caps
        if not caps.enforced:
            raise LaunchError(f"its memory_max cannot be enforced here: {caps.reason}")
        try:
            return cgroups.create(caps, spec.run_id, spec.memory_max)
        except CapError as exc:
            raise LaunchError(f"cannot make its memory cgroup: {exc}") from exc

    def launch(self, spec: LaunchSpec) -> LocalRunHandle:
        """Start a run and wait until the simulation's pid is known (tests and tools)."""
        launch = self.begin_launch(spec)
        while True:
            readable(launch.fileno(), max(0.0, launch.deadline - time.monotonic()))
            handle = launch.poll()
            if handle is not None:
                return handle

    def poll(self) -> tuple[str, ...]:
        """The runs whose keeper, watched on a timer (no pidfds), has ended since."""
        now = time.monotonic()
        if not self._timed or now < self._next_look:
            return ()
        ended = []
        for run_id, handle in list(self._timed.items()):
            if handle.closed:  # the loop let go of it (settled, or the daemon detaches)
                self._timed.pop(run_id, None)
            elif handle.keeper.ended():
                ended.append(run_id)
                self._timed.pop(run_id, None)
        if ended:
            self._looks.reset()  # runs end together (a sweep's last stage): look again soon
        self._next_look = now + self._looks.next()
        return tuple(ended)

    def _watch_on_timer(self, handle: LocalRunHandle) -> LocalRunHandle:
        if handle.fileno() is None and handle.run_id is not None:
            self._timed[handle.run_id] = handle
            self._looks.reset()
            self._next_look = min(self._next_look, time.monotonic() + KEEPER_POLL_SECONDS)
        return handle

    def close(self) -> None:
        """Nothing of its own to stop: keepers live on without the daemon."""

    def adopt_foreign(
        self,
        run_id: str,
        *,
        pid: int | None,
        pgid: int | None,
        started_at: datetime | None,
        start_ticks: int | None,
        record_dir: Path,
    ) -> RunHandle | None:
        """Watch a run another program started on this machine (see foreign.py)."""
        handle = foreign.adopt_foreign(
            run_id,
            pid=pid,
            pgid=pgid,
            started_at=started_at,
            start_ticks=start_ticks,
            record_dir=record_dir,
            means=self.means,
        )
        return None if handle is None else self._watch_on_timer(handle)

    def _check_spec(self, spec: LaunchSpec) -> tuple[Path, list[str]]:
        if not spec.argv:
            raise LaunchError("the command is empty")
        cwd = spec.cwd.absolute()
        if not cwd.is_dir():
            raise LaunchError(f"working directory {cwd} does not exist or is not a directory")
        program = resolve_program(spec.argv[0], spec.env, cwd)
        if exec_problem(Path(self.setsid_path)) is not None:
            raise LaunchError(f"util-linux setsid not found at {self.setsid_path}")
        dropped = sorted(k for k in spec.env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
        if dropped:
            # sh passes on only variables whose names are shell identifiers.
            log.warning("env_names_dropped", run_id=spec.run_id, names=dropped)
        return cwd, [program, *spec.argv[1:]]

    def _prepare_record_dir(self, record_dir: Path, run_id: str, memory_max: int | None) -> None:
        record_dir.mkdir(parents=True, exist_ok=True)
        # One listing instead of a read and five unlinks: a fresh record dir holds nothing.
        present = set(os.listdir(record_dir))
        boot_id = read_boot_id_file(record_dir) if BOOT_ID_FILE in present else None
        keeper = identity_from_file(record_dir / KEEPER_FILE, boot_id) if boot_id else None
        if keeper is not None and is_same_process(keeper):
            # Never start a run twice: an earlier launch from here is still going.
            raise LaunchError(
                f"an earlier keeper for this run is still running (pid {keeper.pid}); "
                "refusing to start the run twice"
            )
        for name in present.intersection((*RECORD_FILES, CAP_FILE)):
            (record_dir / name).unlink(missing_ok=True)
        (record_dir / BOOT_ID_FILE).write_text(current_boot_id() + "\n", encoding="ascii")
        if memory_max is not None:  # for an adopting daemon whose cgroup lost it (ensure_cap)
            (record_dir / CAP_FILE).write_text(f"{memory_max}\n", encoding="ascii")
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
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in inheritable_fds(SPAWN_FIRST_FREE_FD - 1)]
        try:
            return os.posix_spawn(
                SH_PATH,
                args,
                dict(spec.env),
                file_actions=actions,
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except (OSError, ValueError) as exc:
            raise LaunchError(f"could not start the run's keeper ({SH_PATH}): {exc}") from exc

    def handle_for(
        self,
        spec: LaunchSpec,
        record_dir: Path,
        keeper_pid: int,
        keeper_fd: int | None,
        line: str,
        log_start: int,
        report_fd: int | None = None,
    ) -> LocalRunHandle:
        """The handle of a launch whose keeper reported `line`; watched through `keeper_fd`,
        or without pidfds through `report_fd` (taken over only when this returns)."""
        try:
            sim = parse_stat(line)
        except ValueError:
            why = f"reported garbage instead of the simulation's pid: {line[:80]!r}"
            raise self.abort(spec, record_dir, keeper_pid, keeper_fd, why, log_start) from None
        if not (sim.ppid == keeper_pid and sim.pgrp == sim.pid == sim.session):
            # setsid forked (not util-linux, or run by a group leader): the keeper would be
            # waiting for the wrong process and report the run over at once.
            why = f"started the simulation outside its own session (setsid {self.setsid_path})"
            raise self.abort(spec, record_dir, keeper_pid, keeper_fd, why, log_start)
        keeper_stat = read_stat(keeper_pid)  # our unreaped child: present, maybe a zombie
        if keeper_stat is None:
            why = "vanished although it was not reaped"
            raise self.abort(spec, record_dir, keeper_pid, keeper_fd, why, log_start)
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
        sim_fd = open_pidfd(record.sim_identity, zombie_ok=True) if self.means.pidfds else None
        log.debug(  # the loop logs run_started with the same ids: one line a run is enough
            "run_launched",
            run_id=spec.run_id,
            pid=record.pid,
            pgid=record.pgid,
            keeper_pid=keeper_pid,
        )
        keeper = KeeperWatch(
            record.keeper_identity, pidfd=keeper_fd, pipe_fd=report_fd, child=True
        )
        return LocalRunHandle(
            record,
            record_dir=record_dir,
            run_id=spec.run_id,
            keeper=keeper,
            group=group_watch(record, self.means, leader_pidfd=sim_fd, run_id=spec.run_id),
        )

    def abort(
        self,
        spec: LaunchSpec,
        record_dir: Path,
        keeper_pid: int,
        keeper_fd: int | None,
        why: str,
        log_start: int,
        grace: float = 0.0,
    ) -> LaunchError:
        """Stop whatever the failed launch left (no process stays behind); the error to raise."""
        _child_ended(keeper_pid, keeper_fd, grace)  # one that ended by itself has the last word
        # Then its whole group goes, leftovers too. The keeper is our child and not yet reaped
        # (at worst a zombie), so its pid, hence its group id, cannot have been reused.
        try:
            os.killpg(keeper_pid, signal.SIGKILL)
            log.info("signal_sent", run_id=spec.run_id, pgid=keeper_pid, signal="SIGKILL")
        except ProcessLookupError:
            pass
        # A simulation that got as far as its own session is out of the keeper's group.
        boot_id = current_boot_id()
        sim = identity_from_file(record_dir / SIM_FILE, boot_id)
        if sim is not None:
            kill_group(sim, self.means, spec.run_id, "the launch failed")
        result = _reap_child(keeper_pid, keeper_fd, KEEPER_REAP_TIMEOUT)
        how = ""
        if result is not None and result.si_code == os.CLD_EXITED:
            how = f" (keeper exit code {result.si_status})"
            if result.si_status == EXIT_NO_CGROUP:
                how = " (the simulation could not enter its memory cgroup)"
        elif result is not None:
            how = f" (keeper killed by {signal_name(result.si_status)})"
        tail = log_tail(spec.log_path.absolute(), log_start)
        message = f"the run's keeper {why}{how}"
        if tail:
            message += f"; its log says: {tail}"
        log.warning("launch_failed", run_id=spec.run_id, error=message)
        return LaunchError(message)

    # -- recover --

    def recover(self, ref: RunRef) -> Recovery:
        """Find a run again after a restart, from its saved record or from its files alone."""
        finder = RunFinder(
            means=self.means,
            caps=lambda: self.caps,
            report_timeout=self.report_timeout,
        )
        found = finder.recover(ref)
        if isinstance(found, Adopted) and isinstance(found.handle, LocalRunHandle):
            self._watch_on_timer(found.handle)
        return found

def _child_ended(pid: int, pidfd: int | None, timeout: float) -> bool:
    """Wait up to `timeout` for our child `pid` to end (not reaping it); True if it did."""
    if pidfd is not None:
        return readable(pidfd, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if found is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(CHILD_POLL_SECONDS)


def _reap_child(pid: int, pidfd: int | None, timeout: float) -> os.waitid_result | None:
    """Reap our child `pid` once it ended (waiting up to `timeout`); None if it did not."""
    if not _child_ended(pid, pidfd, timeout):
        return None
    if pidfd is not None:
        return reap_status(pidfd)
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None


class LocalLaunch:
    """A keeper spawned and not yet heard from: the loop polls it when its report pipe stirs."""

    def __init__(
        self,
        executor: LocalExecutor,
        spec: LaunchSpec,
        *,
        record_dir: Path,
        keeper_pid: int,
        keeper_fd: int | None,
        report_fd: int,
        go_fd: int,
        log_start: int,
        cgroup: cgroups.RunCgroup | None = None,
    ) -> None:
        """Take ownership of the keeper's pidfd, of our ends of its two pipes, of its cgroup."""
        self.run_id = spec.run_id
        self.external_id: str | None = None  # a local run has no other id
        self.deadline = time.monotonic() + executor.report_timeout
        self._executor = executor
        self._spec = spec
        self._record_dir = record_dir
        self._keeper_pid = keeper_pid
        self._keeper_fd: int | None = keeper_fd
        self._report_fd: int | None = report_fd
        self._go_fd: int | None = go_fd
        self._log_start = log_start
        self._cgroup = cgroup
        self._buffer = b""

    def fileno(self) -> int:
        """The report pipe: readable once the keeper reported (or ended)."""
        if self._report_fd is None:
            raise ValueError("the launch is over")
        return self._report_fd

    def poll(self) -> LocalRunHandle | None:
        """The run's handle once the keeper reported; None before; LaunchError if it failed."""
        line, why = self._read()
        if line is None and not why:
            return None
        keeper_fd = self._keeper_fd
        self._keeper_fd = None  # from here on the handle or _abort owns it
        try:
            if line is None:
                grace = KEEPER_EXIT_GRACE if why == KEEPER_ENDED else 0.0
                raise self._executor.abort(
                    self._spec,
                    self._record_dir,
                    self._keeper_pid,
                    keeper_fd,
                    why,
                    self._log_start,
                    grace,
                )
            # Without pidfds the report pipe stays open: its EOF is the keeper's end.
            report_fd = self._report_fd if keeper_fd is None else None
            handle = self._executor.handle_for(
                self._spec, self._record_dir, self._keeper_pid, keeper_fd, line,
                self._log_start, report_fd,
            )
            if report_fd is not None:
                self._report_fd = None  # the handle's now
            handle.cgroup = self._cgroup
            return handle
        except BaseException:
            if keeper_fd is not None:
                os.close(keeper_fd)
            if self._cgroup is not None:
                cgroups.kill_and_remove_aside(self._cgroup)  # never waits on the loop
            raise
        finally:
            self._close_pipes()  # closing the go pipe lets the simulation exec

    def _read(self) -> tuple[str | None, str]:
        """(line, "") once reported; (None, why) if it failed; (None, "") not yet."""
        fd = self.fileno()
        while b"\n" not in self._buffer:
            try:
                chunk = os.read(fd, REPORT_READ_BYTES)
            except BlockingIOError:
                if time.monotonic() >= self.deadline:
                    timeout = self._executor.report_timeout
                    return None, f"did not report the simulation's start within {timeout:g} s"
                return None, ""
            if not chunk:
                return None, KEEPER_ENDED
            self._buffer += chunk
        return self._buffer.split(b"\n", 1)[0].decode("utf-8", "replace"), ""

    def cancel(self) -> bool:
        """A local launch reports within milliseconds: cancel the run once it has started."""
        return False

    def abandon(self) -> None:
        """Let the keeper go on unwatched: a restarted daemon finds the run from its files."""
        self._close_pipes()
        if self._keeper_fd is not None:
            os.close(self._keeper_fd)
            self._keeper_fd = None

    def _close_pipes(self) -> None:
        for fd in (self._report_fd, self._go_fd):
            if fd is not None:
                os.close(fd)
        self._report_fd = self._go_fd = None
