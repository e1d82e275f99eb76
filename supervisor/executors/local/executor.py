"""The local executor: starts runs on this machine under a keeper and finds them again."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path

import structlog

from supervisor.errors import CapError, LaunchError
from supervisor.executors.base import (
    Adopted,
    EndedWhileAway,
    ExitStatus,
    FailedToStart,
    LaunchSpec,
    Lost,
    NeverStarted,
    ProcessIdentity,
    ProcessRecord,
    Recovery,
    RunHandle,
    RunRef,
    StillStarting,
)
from supervisor.executors.local import cgroups, foreign, pinning
from supervisor.executors.local.handle import LocalRunHandle
from supervisor.executors.local.identity import (
    current_boot_id,
    is_same_process,
    open_pidfd,
    parse_stat,
    pidfd_group_signal,
    process_age_seconds,
    read_stat,
    readable,
    reap,
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
    read_exit_file,
)
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

LOST_MACHINE_RESTARTED = "the machine restarted"
LOST_KEEPER_KILLED = "the keeper process was killed; exit status unknown"
LOST_NEVER_STARTED = "never started"
# In the record dir of a capped run: its cap in bytes, for a daemon that adopts the run.
CAP_FILE = "memory_max"
# Everything the daemon may have set to "ignore" goes back to default in the keeper: an ignored
# signal stays ignored across exec and a non-interactive sh cannot trap it (think `nohup`).
# (glibc's posix_spawn leaves its two internal signals, 32 and 33, ignored and will not let them
# be named here; a glibc program installs its own handlers for them when it needs them.)
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class LocalExecutor:
    """Runs simulations on this machine under a per-run sh keeper."""

    name = "local"
    poll_interval: float | None = None  # each run's keeper pidfd tells when it ends
    runs_dir: Path | None = None  # the daemon's
    max_in_flight: int | None = None  # max_concurrent_runs and [resources] apply

    def __init__(
        self,
        *,
        report_timeout: float = LAUNCH_REPORT_TIMEOUT,
        setsid_path: str | None = None,
        caps: cgroups.CapSupport | None = None,
    ) -> None:
        """`setsid_path`: util-linux setsid (default: found on the daemon's PATH); `caps`: how
        memory caps are enforced here (default: found out, and set up, on first need)."""
        self.report_timeout = report_timeout
        found = setsid_path or shutil.which("setsid") or SETSID_FALLBACK_PATH
        self.setsid_path = os.path.abspath(found)
        self._caps = caps

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
            # Now only the keeper side holds the report pipe's write end: EOF means it is gone.
            try:
                keeper_fd = os.pidfd_open(keeper_pid)  # our unreaped child: surely the keeper
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
        """Nothing to look at: each local handle's pidfd tells when its run ends."""
        return ()

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
        return foreign.adopt_foreign(
            run_id,
            pid=pid,
            pgid=pgid,
            started_at=started_at,
            start_ticks=start_ticks,
            record_dir=record_dir,
        )

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
        keeper_fd: int,
        line: str,
        log_start: int,
    ) -> LocalRunHandle:
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
        sim_fd = open_pidfd(record.sim_identity, zombie_ok=True)
        log.debug(  # the loop logs run_started with the same ids: one line a run is enough
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

    def abort(
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
        readable(keeper_fd, grace)  # a keeper that ended by itself has the last word
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
            self._kill_group_of(sim, spec.run_id, "the launch failed")
        readable(keeper_fd, KEEPER_REAP_TIMEOUT)
        result = reap(keeper_fd)
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
        record_dir = ref.record_dir.absolute()
        if ref.process is None:
            return self._recover_from_files(record_dir, ref.run_id)
        return self._recover_record(record_dir, ref.process, ref.run_id)

    def _recover_record(self, record_dir: Path, record: ProcessRecord, run_id: str) -> Recovery:
        boot_id = current_boot_id()
        # A recorded exit is the truth even from an earlier boot: read it before the boot id.
        status = read_exit_file(record_dir)
        if status is None and record.boot_id != boot_id:
            why = f"{LOST_MACHINE_RESTARTED} (boot id {record.boot_id}, now {boot_id})"
            log.warning("run_lost", run_id=run_id, why=why)
            return Lost(why, record)
        if status is not None:
            log.info(
                "run_ended_while_away",
                run_id=run_id,
                exit_code=status.exit_code,
                exit_signal=status.exit_signal,
            )
            return EndedWhileAway(status, record)
        keeper_fd = open_pidfd(record.keeper_identity, zombie_ok=False)
        sim_fd = open_pidfd(record.sim_identity, zombie_ok=True)
        if keeper_fd is not None:
            log.info("run_adopted", run_id=run_id, pid=record.pid, keeper_pid=record.keeper_pid)
            handle = LocalRunHandle(
                record,
                record_dir=record_dir,
                run_id=run_id,
                keeper_pidfd=keeper_fd,
                sim_pidfd=sim_fd,
            )
            handle.cgroup = self._find_cgroup(run_id)
            if handle.cgroup is not None:
                _restore_cap(handle.cgroup, record_dir)
            return Adopted(handle)
        status = read_exit_file(record_dir)  # the keeper may have finished since the first look
        if status is not None:
            if sim_fd is not None:
                os.close(sim_fd)
            return EndedWhileAway(status, record)
        why = f"{LOST_KEEPER_KILLED} (keeper pid {record.keeper_pid})"
        log.warning("run_lost", run_id=run_id, why=why, simulation_alive=sim_fd is not None)
        if sim_fd is None:
            return Lost(why, record)
        handle = LocalRunHandle(
            record, record_dir=record_dir, run_id=run_id, keeper_pidfd=None, sim_pidfd=sim_fd
        )
        return Lost(why, record, leftover=handle)

    def _find_cgroup(self, run_id: str) -> cgroups.RunCgroup | None:
        """The memory cgroup an earlier daemon made for the run, if caps work here at all."""
        caps = self.caps
        if not caps.enforced:
            return None
        try:
            return cgroups.find(caps, run_id)
        except CapError:  # not a run id (the row's was checked before: a caller's label)
            return None

    def _recover_from_files(self, record_dir: Path, run_id: str) -> Recovery:
        boot_id = read_boot_id_file(record_dir)
        if boot_id is None:
            return NeverStarted(f"{LOST_NEVER_STARTED} (no launch recorded)")
        if boot_id != current_boot_id():
            status = read_exit_file(record_dir)
            if status is not None:
                return _failed_before_start(status)
            why = f"{LOST_MACHINE_RESTARTED} (boot id {boot_id}, now {current_boot_id()})"
            # Nothing from that boot runs any more; whether the simulation ever ran is unknown.
            if (record_dir / SIM_FILE).exists():
                return Lost(why, None)
            return NeverStarted(why)
        sim = identity_from_file(record_dir / SIM_FILE, boot_id)
        keeper = identity_from_file(record_dir / KEEPER_FILE, boot_id)
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
        self, record_dir: Path, keeper: ProcessIdentity | None, run_id: str
    ) -> Recovery:
        """No simulation ever reported from here: say so, or wait for a keeper still starting."""
        if keeper is not None and is_same_process(keeper):
            age = process_age_seconds(keeper.start_ticks)
            if age < self.report_timeout:
                # Not blocking here: the caller looks again later.
                return StillStarting(f"keeper pid {keeper.pid} is {age:.1f} s old")
            self._kill_stuck_keeper(keeper, run_id)
            why = f"{LOST_NEVER_STARTED} (keeper pid {keeper.pid} never reported; killed)"
            return NeverStarted(why)
        status = read_exit_file(record_dir)
        if status is not None:
            # The keeper ran and recorded a failure before the simulation could start.
            return _failed_before_start(status)
        seen = "its keeper started but ended" if keeper is not None else "no keeper started"
        return NeverStarted(f"{LOST_NEVER_STARTED} ({seen})")

    def _kill_stuck_keeper(self, keeper: ProcessIdentity, run_id: str | None) -> None:
        # The keeper leads its own group: this stops it and a setsid not yet done.
        self._kill_group_of(keeper, run_id, "the keeper never reported the simulation")

    @staticmethod
    def _kill_group_of(leader: ProcessIdentity, run_id: str | None, why: str) -> None:
        """SIGKILL the group `leader` leads, if `leader` is still that process."""
        fd = open_pidfd(leader, zombie_ok=True)
        if fd is None:
            return
        try:
            sent = pidfd_group_signal(fd, signal.SIGKILL)
            if sent is None:
                os.killpg(leader.pid, signal.SIGKILL)  # old kernel: identity checked just above
                sent = True
        except ProcessLookupError:
            sent = False
        finally:
            os.close(fd)
        if sent:
            log.warning("signal_sent", run_id=run_id, pgid=leader.pid, signal="SIGKILL", why=why)


def _restore_cap(cgroup: cgroups.RunCgroup, record_dir: Path) -> None:
    """Give an adopted run its cap again if its cgroup lost it (cgroups.ensure_cap)."""
    try:
        memory_max = int((record_dir / CAP_FILE).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return  # launched before caps were recorded, or uncapped
    try:
        cgroups.ensure_cap(cgroup, memory_max)
    except CapError as exc:
        log.warning("cgroup_cap_not_restored", run_id=cgroup.run_id, error=str(exc))


def _failed_before_start(status: ExitStatus) -> FailedToStart:
    how = status.describe()
    return FailedToStart(f"the keeper failed before the simulation ran ({how})")


class LocalLaunch:
    """A keeper spawned and not yet heard from: the loop polls it when its report pipe stirs."""

    def __init__(
        self,
        executor: LocalExecutor,
        spec: LaunchSpec,
        *,
        record_dir: Path,
        keeper_pid: int,
        keeper_fd: int,
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
        assert keeper_fd is not None
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
            handle = self._executor.handle_for(
                self._spec, self._record_dir, self._keeper_pid, keeper_fd, line, self._log_start
            )
            handle.cgroup = self._cgroup
            return handle
        except BaseException:
            os.close(keeper_fd)
            if self._cgroup is not None and cgroups.kill(self._cgroup):
                cgroups.remove(self._cgroup, 0.0)
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
