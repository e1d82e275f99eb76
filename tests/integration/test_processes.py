"""The local executor (supervisor/executors/local/) with real processes and real signals.

Nothing sleeps and hopes: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import psutil
import pytest
import structlog.testing

from supervisor.errors import LaunchError
from supervisor.executors.base import (
    UNKNOWN_EXIT,
    Adopted,
    EndedWhileAway,
    Executor,
    ExitStatus,
    LaunchSpec,
    Lost,
    NeverStarted,
    ProcessIdentity,
    ProcessRecord,
    RunRef,
)
from supervisor.executors.local import cgroups
from supervisor.executors.local.executor import LocalExecutor
from supervisor.executors.local.finding import LOST_KEEPER_KILLED, LOST_MACHINE_RESTARTED
from supervisor.executors.local.handle import LocalRunHandle
from supervisor.executors.local.identity import (
    current_boot_id,
    identify,
    is_same_process,
    parse_stat_line,
)
from supervisor.executors.local.keeper import BOOT_ID_FILE, EXIT_FILE, KEEPER_FILE, SIM_FILE
from supervisor.executors.local.means import detect

DEADLINE = 10.0  # seconds any awaited condition may take before the test fails
POLL = 0.01
PATH = "/usr/bin:/bin"
KEEPER_SHELL = "/bin/sh"  # what the keeper runs as (its cost: bench/keeper_cost.py)


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll `condition` until true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def wait_exit(handle: LocalRunHandle, timeout: float = DEADLINE) -> ExitStatus:
    """Wait (on fileno, as the daemon's selector does, or where there is none as its
    executor's timer does) until the run ended; its status."""
    fd = handle.fileno()
    if fd is None:  # an adopted keeper without pidfds (kernel class none)
        wait_for(lambda: handle.keeper.ended(), "the keeper to end", timeout)
    else:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(timeout * 1000), f"run still going after {timeout} s"
    status = handle.exit_status()
    assert status is not None
    return status


def stat_of(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after comm: [state, ppid, pgrp, session, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def live_group_members(pgid: int) -> list[int]:
    """Pids of processes in group `pgid` that have not exited (zombies left out)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def log_text(spec: LaunchSpec) -> str:
    try:
        return spec.log_path.read_text()
    except FileNotFoundError:
        return ""


class Runs:
    """Launches runs for a test and makes sure none outlives it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.executor = LocalExecutor()
        self.handles: list[LocalRunHandle] = []
        self._count = 0

    def spec(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> LaunchSpec:
        self._count += 1
        run_dir = self.base / f"run{self._count}"
        run_dir.mkdir()
        return LaunchSpec(
            run_id=f"run{self._count}",
            argv=list(argv),
            cwd=cwd or run_dir,
            env=env if env is not None else {"PATH": PATH},
            log_path=run_dir / "logs" / "sim.log",
            record_dir=run_dir / ".runsup",
        )

    def launch(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[LocalRunHandle, LaunchSpec]:
        spec = self.spec(argv, env=env, cwd=cwd)
        return self.track(self.executor.launch(spec)), spec

    def track(self, handle: LocalRunHandle) -> LocalRunHandle:
        self.handles.append(handle)
        return handle

    def cleanup(self) -> None:
        for handle in self.handles:
            try:
                if handle.group_alive():
                    handle.signal_group(signal.SIGKILL)
                    wait_for(lambda: not handle.group_alive(), "the group to die")  # noqa: B023
                handle.exit_status()
            except ValueError:
                pass  # closed by the test
            handle.close()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    r = Runs(tmp_path)
    yield r
    r.cleanup()


def sh(script: str, *args: str) -> list[str]:
    return ["/bin/sh", "-c", script, "sim", *args]


def ready(spec: LaunchSpec, word: str = "ready") -> None:
    wait_for(lambda: word in log_text(spec), f"{word!r} in the log")


# -- exit statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 5, 255])
def test_exit_code(runs: Runs, code: int) -> None:
    handle, _ = runs.launch(sh(f"exit {code}"))
    assert wait_exit(handle) == ExitStatus(code, None)


def test_exit_status_is_none_while_running(runs: Runs) -> None:
    handle, _ = runs.launch(["sleep", "60"])
    assert handle.exit_status() is None
    assert handle.group_alive()


def test_sigterm_to_group(runs: Runs) -> None:
    handle, _ = runs.launch(["sleep", "60"])
    assert handle.signal_group(signal.SIGTERM)
    assert wait_exit(handle) == ExitStatus(None, signal.SIGTERM)
    assert not handle.group_alive()
    assert not handle.signal_group(signal.SIGTERM)  # gone


def test_killpg_by_someone_else_cancels(runs: Runs) -> None:
    handle, _ = runs.launch(["sleep", "60"])
    os.killpg(handle.record.pgid, signal.SIGTERM)  # what a GUI does with the row's pgid
    assert wait_exit(handle) == ExitStatus(None, signal.SIGTERM)


def test_sim_ignoring_sigterm_needs_sigkill(runs: Runs) -> None:
    handle, spec = runs.launch(
        sh("trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done")
    )
    ready(spec)
    assert handle.signal_group(signal.SIGTERM)
    ready(spec, "got-term")  # delivered, and survived
    assert handle.exit_status() is None
    assert handle.group_alive()
    assert handle.signal_group(signal.SIGKILL)
    assert wait_exit(handle) == ExitStatus(None, signal.SIGKILL)


def test_sigkill_reaches_children_in_the_group(runs: Runs) -> None:
    handle, spec = runs.launch(sh("sleep 60 & sleep 60 & echo ready; wait"))
    ready(spec)
    assert len(live_group_members(handle.record.pgid)) == 3
    assert handle.signal_group(signal.SIGKILL)
    wait_for(lambda: not handle.group_alive(), "the group to be empty")
    assert live_group_members(handle.record.pgid) == []
    assert wait_exit(handle) == ExitStatus(None, signal.SIGKILL)


def test_children_left_behind_by_an_exited_simulation(runs: Runs) -> None:
    # The leader exits at once; its children stay in its group, reachable only as a group.
    handle, _ = runs.launch(sh("sleep 60 & sleep 60 & exit 0"))
    assert wait_exit(handle) == ExitStatus(0, None)
    assert identify(handle.record.pid) is None
    assert handle.group_alive()
    assert len(live_group_members(handle.record.pgid)) == 2
    assert handle.signal_group(signal.SIGKILL)
    # Their zombies may linger (this machine's init does not reap): they do not count.
    wait_for(lambda: not handle.group_alive(), "the leftovers to die")


def test_sigterm_to_the_keeper_does_not_lose_the_status(runs: Runs) -> None:
    handle, spec = runs.launch(
        sh("echo ready; while [ ! -e release ]; do sleep 0.02; done; exit 7")
    )
    ready(spec)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(handle.record.keeper_pid, sig)
    (spec.cwd / "release").touch()
    assert wait_exit(handle) == ExitStatus(7, None)


# -- process layout, environment, files -----------------------------------------------------------


def test_simulation_leads_its_group_and_session_and_keeper_is_outside(runs: Runs) -> None:
    handle, _ = runs.launch(["sleep", "60"])
    rec = handle.record
    sim = stat_of(rec.pid)
    keeper = stat_of(rec.keeper_pid)
    assert rec.pgid == rec.pid
    assert (int(sim[1]), int(sim[2]), int(sim[3])) == (rec.keeper_pid, rec.pid, rec.pid)
    # The keeper leads a session and group of its own, apart from the run's and ours.
    assert int(keeper[2]) == int(keeper[3]) == rec.keeper_pid
    assert int(keeper[2]) not in (rec.pgid, os.getpgrp())
    # The pid is reported just before the exec: the same process becomes `sleep`.
    sleep = Path("/usr/bin/sleep").resolve()
    wait_for(lambda: Path(f"/proc/{rec.pid}/exe").resolve() == sleep, "the exec of sleep")
    assert identify(rec.pid) == ProcessIdentity(rec.pid, rec.start_ticks, current_boot_id())
    assert rec.boot_id == current_boot_id()
    assert is_same_process(rec.keeper_identity)


def test_record_files(runs: Runs) -> None:
    handle, spec = runs.launch(sh("exit 3"))
    wait_exit(handle)
    rec = handle.record
    rd = spec.record_dir
    assert parse_stat_line((rd / SIM_FILE).read_text()) == (rec.pid, rec.start_ticks)
    assert parse_stat_line((rd / KEEPER_FILE).read_text()) == (
        rec.keeper_pid,
        rec.keeper_start_ticks,
    )
    assert (rd / EXIT_FILE).read_text() == "3\n"
    assert (rd / BOOT_ID_FILE).read_text().strip() == current_boot_id()


def test_env_cwd_and_argv_as_given(runs: Runs, tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    env = {"PATH": PATH, "FOO": "bar baz", "EMPTY": "", "MULTI": "a\nb", "d": "kept"}
    argv = ["/usr/bin/env", "-0"]
    handle, spec = runs.launch(argv, env=env, cwd=workdir)
    assert wait_exit(handle) == ExitStatus(0, None)
    got = dict(item.split("=", 1) for item in log_text(spec).split("\0") if item)
    # sh adds PWD (the working directory); nothing else is added or changed.
    assert got == {**env, "PWD": str(workdir)}

    args = ["a b", "", "'quoted'", "$HOME", "*", "-n", "x\ny"]
    handle, spec = runs.launch(["printf", "[%s]\\n", *args], cwd=workdir)
    assert wait_exit(handle) == ExitStatus(0, None)
    assert log_text(spec) == "".join(f"[{a}]\n" for a in args)


def test_variables_sh_cannot_carry_are_reported(runs: Runs) -> None:
    # sh hands on only names that are shell identifiers (an exported bash function is not).
    env = {"PATH": PATH, "A-B": "1", "BASH_FUNC_module%%": "() { :; }"}
    with structlog.testing.capture_logs() as logs:
        handle, spec = runs.launch(["/usr/bin/env"], env=env)
    assert wait_exit(handle) == ExitStatus(0, None)
    assert "A-B=" not in log_text(spec)
    dropped = [e for e in logs if e["event"] == "env_names_dropped"]
    assert dropped == [
        {
            "event": "env_names_dropped",
            "log_level": "warning",
            "run_id": spec.run_id,
            "names": ["A-B", "BASH_FUNC_module%%"],
        }
    ]


def test_oldpwd_passes_through_when_given(runs: Runs) -> None:
    handle, spec = runs.launch(["/usr/bin/env"], env={"PATH": PATH, "OLDPWD": "/somewhere"})
    wait_exit(handle)
    assert "OLDPWD=/somewhere\n" in log_text(spec)


def test_log_gets_stdout_and_stderr_appended(runs: Runs) -> None:
    spec = runs.spec(sh("echo out; echo err >&2; exit 1"))
    spec.log_path.parent.mkdir(parents=True)
    spec.log_path.write_text("earlier\n")
    handle = runs.track(runs.executor.launch(spec))
    assert wait_exit(handle) == ExitStatus(1, None)
    assert log_text(spec) == "earlier\nout\nerr\n"


def test_stdin_is_dev_null_and_no_descriptor_leaks(runs: Runs) -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)  # an inheritable descriptor of the daemon's must not leak
    try:
        handle, spec = runs.launch(sh("cat; ls /proc/$$/fd; readlink /proc/$$/fd/0"))
        assert wait_exit(handle) == ExitStatus(0, None)
    finally:
        os.close(r)
        os.close(w)
    lines = log_text(spec).split()
    assert lines == ["0", "1", "2", "/dev/null"]


def test_signals_reset_even_if_the_daemon_ignores_or_blocks_them(runs: Runs) -> None:
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        handle, spec = runs.launch(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
        assert wait_exit(handle) == ExitStatus(0, None)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGHUP, old)
    fields = log_text(spec).split()
    assert fields[:3] == ["SigBlk:", "0" * 16, "SigIgn:"]
    # Nothing ignored but glibc's internal 32 and 33, which its posix_spawn leaves so.
    glibc_internal = (1 << 31) | (1 << 32)
    assert int(fields[3], 16) & ~glibc_internal == 0


# -- launch failures ------------------------------------------------------------------------------


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_unknown_command(runs: Runs) -> None:
    before = children()
    spec = runs.spec(["surely-no-such-command"], env={"PATH": "/nowhere:/bin"})
    with pytest.raises(
        LaunchError, match=r"command 'surely-no-such-command' not found on PATH=/nowhere:/bin"
    ):
        runs.executor.launch(spec)
    assert children() == before
    assert not (spec.record_dir / KEEPER_FILE).exists()


def test_not_executable(runs: Runs, tmp_path: Path) -> None:
    script = tmp_path / "sim.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    before = children()
    with pytest.raises(LaunchError, match=rf"'{script}' is not executable"):
        runs.executor.launch(runs.spec([str(script)]))
    assert children() == before


def test_missing_working_directory(runs: Runs, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"working directory .* does not exist"):
        runs.executor.launch(runs.spec(["true"], cwd=tmp_path / "gone"))


def fake_setsid(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-setsid"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_keeper_ending_before_the_simulation_starts(runs: Runs, tmp_path: Path) -> None:
    runs.executor = LocalExecutor(
        setsid_path=fake_setsid(tmp_path, "echo setsid is broken >&2; exit 3")
    )
    before = children()
    spec = runs.spec(["sleep", "60"])
    with pytest.raises(
        LaunchError,
        match=r"ended before the simulation started \(keeper exit code 3\); "
        r"its log says: setsid is broken",
    ):
        runs.executor.launch(spec)
    assert children() == before  # reaped, nothing left


def test_keeper_not_reporting_in_time(runs: Runs, tmp_path: Path) -> None:
    runs.executor = LocalExecutor(
        setsid_path=fake_setsid(tmp_path, "exec sleep 60"), report_timeout=0.3
    )
    before = children()
    spec = runs.spec(["sleep", "60"])
    with pytest.raises(LaunchError, match=r"did not report the simulation's start within 0.3 s"):
        runs.executor.launch(spec)
    assert children() == before
    keeper_pid, _ = parse_stat_line((spec.record_dir / KEEPER_FILE).read_text())
    wait_for(lambda: not live_group_members(keeper_pid), "the keeper's group to die")


def test_setsid_that_forks_is_caught(runs: Runs, tmp_path: Path) -> None:
    # A setsid that forks would leave the keeper waiting for the wrong process.
    runs.executor = LocalExecutor(setsid_path=fake_setsid(tmp_path, 'exec /usr/bin/setsid -f "$@"'))
    spec = runs.spec(["sleep", "60"])
    with pytest.raises(LaunchError, match="outside its own session"):
        runs.executor.launch(spec)
    sim_pid, _ = parse_stat_line((spec.record_dir / SIM_FILE).read_text())
    wait_for(lambda: not live_group_members(sim_pid), "the stray simulation to be killed")


def test_refuses_to_start_twice_from_one_record_dir(runs: Runs) -> None:
    handle, spec = runs.launch(["sleep", "60"])
    with pytest.raises(LaunchError, match="still running"):
        runs.executor.launch(spec)
    assert is_same_process(handle.record.sim_identity)


# -- recovery after a restart ---------------------------------------------------------------------


def test_new_backend_adopts_a_live_run_and_sees_its_exit(runs: Runs) -> None:
    first, spec = runs.launch(sh("echo ready; while [ ! -e release ]; do sleep 0.02; done; exit 7"))
    ready(spec)
    executor: Executor = LocalExecutor()  # as after a daemon restart
    found = executor.recover(RunRef("r", spec.record_dir, first.record))
    assert isinstance(found, Adopted) and found.handle.record == first.record
    assert isinstance(found.handle, LocalRunHandle)
    adopted = runs.track(found.handle)
    assert adopted.exit_status() is None
    assert adopted.group_alive()
    (spec.cwd / "release").touch()
    assert wait_exit(adopted) == ExitStatus(7, None)
    assert wait_exit(first) == ExitStatus(7, None)  # already reaped by the other: tolerated


def test_run_that_ended_while_away(runs: Runs) -> None:
    first, spec = runs.launch(sh("exit 5"))
    poller = select.poll()
    poller.register(first.fileno(), select.POLLIN)
    assert poller.poll(DEADLINE * 1000)
    found = LocalExecutor().recover(RunRef("r", spec.record_dir, first.record))
    assert found == EndedWhileAway(ExitStatus(5, None), first.record)


def test_keeper_killed_means_lost_but_the_group_can_still_be_stopped(runs: Runs) -> None:
    first, spec = runs.launch(["sleep", "60"])
    os.kill(first.record.keeper_pid, signal.SIGKILL)
    wait_for(lambda: not is_same_process(first.record.keeper_identity), "the keeper to die")
    found = LocalExecutor().recover(RunRef("r", spec.record_dir, first.record))
    assert isinstance(found, Lost) and found.why.startswith(LOST_KEEPER_KILLED)
    assert isinstance(found.leftover, LocalRunHandle)
    left = runs.track(found.leftover)
    assert left.exit_status() == UNKNOWN_EXIT  # at once: nothing will ever record it
    assert select.select([left.fileno()], [], [], 0)[0]
    assert left.group_alive()
    assert left.signal_group(signal.SIGKILL)
    wait_for(lambda: not left.group_alive(), "the orphaned simulation to die")
    assert wait_exit(first) == UNKNOWN_EXIT  # the launching handle agrees, and reaps


def test_other_boot_means_machine_restarted(runs: Runs) -> None:
    first, spec = runs.launch(["sleep", "60"])
    stale = dataclasses.replace(first.record, boot_id="00000000-0000-0000-0000-000000000000")
    found = LocalExecutor().recover(RunRef("r", spec.record_dir, stale))
    assert isinstance(found, Lost) and found.leftover is None
    assert found.why.startswith(LOST_MACHINE_RESTARTED)
    assert is_same_process(first.record.sim_identity)  # nothing was touched


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process leading its own group, as a pid's new owner would."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_reused_pid_is_never_signalled(runs: Runs, bystander: subprocess.Popen[bytes]) -> None:
    ident = identify(bystander.pid)
    assert ident is not None
    record = ProcessRecord(
        pid=bystander.pid,
        pgid=bystander.pid,
        start_ticks=ident.start_ticks - 1,  # the run's process had this pid before
        boot_id=ident.boot_id,
        keeper_pid=bystander.pid,
        keeper_start_ticks=ident.start_ticks - 2,
    )
    record_dir = runs.base / "old-run"
    record_dir.mkdir()
    found = LocalExecutor().recover(RunRef("r", record_dir, record))
    assert isinstance(found, Lost) and found.leftover is None
    assert found.why.startswith(LOST_KEEPER_KILLED)
    # Even a handle made from that record refuses.
    handle = LocalRunHandle.keeper_gone(
        record, record_dir=record_dir, run_id="old", means=detect()
    )
    with handle:
        assert not handle.signal_group(signal.SIGKILL)
        assert not handle.group_alive()
        assert handle.exit_status() == UNKNOWN_EXIT
    assert bystander.poll() is None
    assert is_same_process(ident)


def test_own_pid_with_wrong_start_time_is_never_signalled(tmp_path: Path) -> None:
    me = identify(os.getpid())
    assert me is not None
    got: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGWINCH, note)
    try:
        record = ProcessRecord(
            pid=os.getpid(),
            pgid=os.getpgrp(),
            start_ticks=me.start_ticks + 1,
            boot_id=me.boot_id,
            keeper_pid=os.getpid(),
            keeper_start_ticks=me.start_ticks + 1,
        )
        with LocalRunHandle.keeper_gone(
            record, record_dir=tmp_path, run_id="old", means=detect()
        ) as handle:
            assert not handle.signal_group(signal.SIGWINCH)
        os.kill(os.getpid(), signal.SIGWINCH)  # the handler works: it would have seen one
        wait_for(lambda: got, "our own SIGWINCH")
        assert got == [signal.SIGWINCH]
    finally:
        signal.signal(signal.SIGWINCH, old)


def test_recover_from_files_when_the_record_was_never_saved(runs: Runs) -> None:
    first, spec = runs.launch(["sleep", "60"])
    found = LocalExecutor().recover(RunRef("r", spec.record_dir, None))
    assert isinstance(found, Adopted) and found.handle.record == first.record
    assert isinstance(found.handle, LocalRunHandle)
    runs.track(found.handle)
    assert found.handle.exit_status() is None


def test_recover_never_started(runs: Runs, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    found = LocalExecutor().recover(RunRef("r", empty, None))
    assert isinstance(found, NeverStarted) and found.why

    # A keeper that ran and was killed before the simulation reported.
    runs.executor = LocalExecutor(
        setsid_path=fake_setsid(tmp_path, "kill -9 $PPID; exec sleep 60"), report_timeout=0.3
    )
    spec = runs.spec(["sleep", "60"])
    with pytest.raises(LaunchError, match="keeper killed by SIGKILL"):
        runs.executor.launch(spec)
    keeper_pid, _ = parse_stat_line((spec.record_dir / KEEPER_FILE).read_text())
    # What it left in its group was SIGKILLed too.
    wait_for(lambda: not live_group_members(keeper_pid), "the keeper's group to die")
    assert not (spec.record_dir / SIM_FILE).exists()
    found = LocalExecutor().recover(RunRef("r", spec.record_dir, None))
    assert isinstance(found, NeverStarted)


def test_recover_from_files_of_another_boot(tmp_path: Path) -> None:
    (tmp_path / BOOT_ID_FILE).write_text("00000000-0000-0000-0000-000000000000\n")
    found = LocalExecutor().recover(RunRef("r", tmp_path, None))
    assert isinstance(found, NeverStarted) and found.why.startswith(LOST_MACHINE_RESTARTED)


HELPER = """
import dataclasses, json, sys, time
from pathlib import Path
from supervisor.executors.base import LaunchSpec
from supervisor.executors.local.executor import LocalExecutor
d = Path(sys.argv[1])
h = LocalExecutor().launch(LaunchSpec(run_id="sigint", argv=["sleep", "60"], cwd=d,
    env={"PATH": "/usr/bin:/bin"}, log_path=d / "sim.log", record_dir=d / "rec"))
print("RECORD", json.dumps(dataclasses.asdict(h.record)), flush=True)
time.sleep(60)
"""


def test_ctrl_c_to_the_daemons_group_reaches_neither_keeper_nor_simulation(
    runs: Runs, tmp_path: Path
) -> None:
    # The "daemon" runs in a group of its own here, so the test can Ctrl-C it safely.
    daemon = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert daemon.stdout is not None
        line = b""
        while not line.startswith(b"RECORD "):  # structlog's default output comes first
            line = daemon.stdout.readline()
            assert line, "the helper ended without launching"
        record = ProcessRecord(**json.loads(line.split(b" ", 1)[1]))
        os.killpg(daemon.pid, signal.SIGINT)
        os.killpg(daemon.pid, signal.SIGHUP)
        assert daemon.wait(timeout=DEADLINE) != 0
    finally:
        daemon.kill()
        daemon.wait()
    assert is_same_process(record.keeper_identity)
    assert is_same_process(record.sim_identity)
    # Now an orphan of a dead daemon: adopted, stopped, and its status read.
    found = LocalExecutor().recover(RunRef("r", tmp_path / "rec", record))
    assert isinstance(found, Adopted) and isinstance(found.handle, LocalRunHandle)
    handle = runs.track(found.handle)
    assert handle.signal_group(signal.SIGTERM)
    assert wait_exit(handle) == ExitStatus(None, signal.SIGTERM)


# -- cost ----------------------------------------------------------------------------------------


def test_the_keeper_is_the_system_shell_blocked_in_wait_for_the_run(runs: Runs) -> None:
    """Why a keeper costs little (figures: bench/keeper_cost.py, BENCHMARKS.md): it is the
    system's sh, not a Python interpreter, and it sleeps in wait(2) for its one child, the
    run, doing nothing while the run goes."""
    handle, _ = runs.launch(["sleep", "60"])
    keeper = psutil.Process(handle.record.keeper_pid)
    assert os.path.realpath(keeper.exe()) == os.path.realpath(KEEPER_SHELL)
    assert [child.pid for child in keeper.children()] == [handle.record.pid]
    wait_for(lambda: keeper.status() == psutil.STATUS_SLEEPING, "the keeper asleep")
    wchan = Path(f"/proc/{keeper.pid}/wchan").read_text()
    assert wchan in ("do_wait", "0", ""), f"the keeper sleeps in {wchan}, not in wait"


def test_a_cap_that_cannot_be_enforced_fails_the_launch_saying_why(runs: Runs) -> None:
    """Nothing runs uncapped silently (SPEC section 10): the launch fails with the reason."""
    why = "no cgroup memory controller is writable here; " + cgroups.HOW_TO_ENABLE
    runs.executor = LocalExecutor(caps=cgroups.CapSupport(None, None, None, why))
    spec = dataclasses.replace(runs.spec(["true"]), memory_max=64 * 1024 * 1024)
    with pytest.raises(LaunchError, match="cannot be enforced here") as caught:
        runs.executor.begin_launch(spec)
    assert "Delegate=yes" in str(caught.value)
    assert not (spec.record_dir / KEEPER_FILE).exists(), "nothing was started"


@pytest.mark.tier("cgroup")
def test_an_adopted_run_gets_back_the_cap_its_cgroup_lost(runs: Runs) -> None:
    """systemd < 254 turns the memory controller off under a restarted unit (cgroups.ensure_cap):
    the adopting executor sets the cap recorded at launch again."""
    support = runs.executor.caps
    if support.version is not cgroups.CgroupVersion.V1:
        pytest.skip(f"no writable cgroup v1 memory controller: {support.reason}")
    cap = 64 * 1024 * 1024
    spec = dataclasses.replace(
        runs.spec(sh("echo ready; sleep 60")), run_id=os.urandom(6).hex(), memory_max=cap
    )
    first = runs.track(runs.executor.launch(spec))
    cgroup = cgroups.find(support, spec.run_id)
    assert cgroup is not None
    try:
        ready(spec)
        memsw = cgroup.path / "memory.memsw.limit_in_bytes"
        for path in (memsw, cgroup.path / "memory.limit_in_bytes"):
            if path.exists():  # no limit, as a reset controller comes back
                path.write_text("-1")
        assert cgroups.memory_report(cgroup).limit_bytes is None
        found = LocalExecutor().recover(RunRef(spec.run_id, spec.record_dir, first.record))
        assert isinstance(found, Adopted) and isinstance(found.handle, LocalRunHandle)
        runs.track(found.handle)
        assert found.handle.cgroup == cgroup
        assert cgroups.memory_report(cgroup).limit_bytes == cap
    finally:
        runs.cleanup()
        runs.handles.clear()
        cgroups.kill(cgroup)
        cgroups.remove(cgroup)
