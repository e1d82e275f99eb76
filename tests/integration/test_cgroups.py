"""supervisor.executors.local.cgroups with real cgroups on this machine (needs root).

cgroup v1's memory controller is writable here, so caps, peaks and OOM kills are real. The
cgroup v2 hierarchy here offers no memory controller (it is bound to v1), so the v2 tests make
real v2 cgroups without one: create/enter/kill/remove/leftovers are real, memory.max is not.
Every wait is for a condition with a deadline.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from supervisor import outcome
from supervisor.errors import CapError
from supervisor.executors.local import cgroups
from supervisor.executors.local.cgroups import CapSupport, CgroupVersion, RunCgroup
from supervisor.executors.local.identity import identify

MIB = 1024 * 1024
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.01
V2_MOUNT = Path("/sys/fs/cgroup/unified")
# The simulation's own first step, as the keeper's inner sh does it: enter the cgroup, then exec.
ENTER_THEN_EXEC = 'printf 0 >"$1" || exit 124; shift; exec "$@"'

SUPPORT = cgroups.detect()
needs_v1 = pytest.mark.skipif(
    SUPPORT.version is not CgroupVersion.V1, reason=f"no writable cgroup v1: {SUPPORT.reason}"
)
needs_v2_tree = pytest.mark.skipif(
    os.geteuid() != 0 or not (V2_MOUNT / "cgroup.controllers").exists(),
    reason="needs root and a cgroup v2 hierarchy at /sys/fs/cgroup/unified",
)


def new_run_id() -> str:
    """A fresh run id (12 hex characters)."""
    return secrets.token_hex(6)


def spawn_in(cgroup: RunCgroup, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own, entered into `cgroup` before its first instruction."""
    return subprocess.Popen(
        ["/bin/sh", "-c", ENTER_THEN_EXEC, "sh", str(cgroup.procs_file), *argv],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )


def python(code: str) -> list[str]:
    """argv running `code` with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def wait_until(condition: object, what: str) -> None:
    """Poll a zero-argument callable until it is true, failing after WAIT_SECONDS."""
    assert callable(condition)
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


def wait_exited(pid: int) -> None:
    """Wait until `pid` (not our child) has exited, through a pidfd (or /proc without)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as exc:  # kernel class none (RUNSUP_TEST_KERNEL_CLASS): no pidfds
        assert exc.errno == errno.ENOSYS, exc
        wait_until(lambda: identify(pid) is None, f"process {pid} to exit")
        return
    try:
        ready, _, _ = select.select([fd], [], [], WAIT_SECONDS)
        assert ready, f"process {pid} still alive"
    finally:
        os.close(fd)


@pytest.fixture
def v1_cgroup() -> Iterator[tuple[RunCgroup, int]]:
    """A capped v1 cgroup (256 MiB) for a fresh run id; killed and removed afterwards."""
    cap = 256 * MIB
    cgroup = cgroups.create(SUPPORT, new_run_id(), cap)
    yield cgroup, cap
    cgroups.kill(cgroup)
    cgroups.remove(cgroup)


@pytest.fixture
def v2_support() -> Iterator[CapSupport]:
    """A v2 'daemon cgroup' of our own in the unified hierarchy (no memory controller there)."""
    base = V2_MOUNT / f"runsup-test-{secrets.token_hex(4)}"
    base.mkdir()
    yield CapSupport(CgroupVersion.V2, base, V2_MOUNT, "test tree")
    for child in base.iterdir():
        if child.is_dir():
            run_id = cgroups.run_id_of(child.name) or "0" * 12
            cgroups.kill(RunCgroup(CgroupVersion.V2, child, run_id))
            child.rmdir()
    base.rmdir()


def make_v2_run_cgroup(support: CapSupport) -> RunCgroup:
    """A per-run v2 cgroup made by hand (create() needs memory.max, which v2 lacks here)."""
    assert support.base is not None
    run_id = new_run_id()
    path = support.base / cgroups.cgroup_name(run_id)
    path.mkdir()
    return RunCgroup(CgroupVersion.V2, path, run_id)


# -- v1: real caps ------------------------------------------------------------------------------


@needs_v1
def test_detect_here_finds_v1_under_our_own_memory_cgroup() -> None:
    own = Path("/proc/self/cgroup").read_text().splitlines()
    memory_path = next(line.split(":", 2)[2] for line in own if ":memory:" in line)
    assert SUPPORT.base == Path("/sys/fs/cgroup/memory") / memory_path.lstrip("/")
    # Why v2 was passed over is kept for `runsup check`.
    assert "bound to a cgroup v1 hierarchy" in SUPPORT.reason


@needs_v1
def test_a_run_past_its_cap_is_oom_killed_and_reported() -> None:
    cap = 64 * MIB
    cgroup = cgroups.create(SUPPORT, new_run_id(), cap)
    try:
        # Touches every page (bytearray zero-fills), so the memory is really charged.
        proc = spawn_in(cgroup, python("b = [bytearray(1 << 20) for _ in range(512)]"))
        assert proc.wait(WAIT_SECONDS) == -signal.SIGKILL
        report = cgroups.memory_report(cgroup)
        assert report.oom_killed
        assert report.limit_bytes == cap
        assert report.peak_bytes is not None
        assert cap * 0.9 <= report.peak_bytes <= cap
        message = outcome.out_of_memory_message(cap, report.peak_bytes)
        assert message.startswith("out of memory: killed at its memory_max of 64M")
    finally:
        cgroups.kill(cgroup)
        assert cgroups.remove(cgroup)


@needs_v1
def test_a_run_under_its_cap_finishes_and_reports_its_peak(
    v1_cgroup: tuple[RunCgroup, int],
) -> None:
    cgroup, cap = v1_cgroup
    proc = spawn_in(
        cgroup,
        python("""
            import os, sys
            b = bytearray(40 << 20)
            print(open(f"/proc/{os.getpid()}/cgroup").read(), flush=True)
        """),
    )
    out, _ = proc.communicate(timeout=WAIT_SECONDS)
    assert proc.returncode == 0
    # It was inside from the start: python itself reports the run's cgroup as its own.
    assert f"/{cgroup.path.name}\n" in out.decode()
    report = cgroups.memory_report(cgroup)
    assert not report.oom_killed
    assert report.peak_bytes is not None
    assert 40 * MIB <= report.peak_bytes < cap


SETSID_ESCAPE = """
    import subprocess, sys, time
    child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(1000)
"""


def check_kill_reaches_setsid_escapee(cgroup: RunCgroup) -> None:
    """A simulation whose grandchild left with setsid: killpg misses it, the cgroup kill not."""
    proc = spawn_in(cgroup, python(SETSID_ESCAPE))
    assert proc.stdout is not None
    escapee = int(proc.stdout.readline())
    assert os.getpgid(escapee) != proc.pid  # outside the run's process group
    wait_until(lambda: set(cgroups.members(cgroup)) == {proc.pid, escapee}, "both inside")
    assert cgroups.kill(cgroup)
    assert proc.wait(WAIT_SECONDS) == -signal.SIGKILL
    wait_exited(escapee)
    assert cgroups.members(cgroup) == []
    assert cgroups.remove(cgroup)
    assert not cgroup.path.exists()


@needs_v1
def test_v1_kill_reaches_a_setsid_escaped_grandchild(v1_cgroup: tuple[RunCgroup, int]) -> None:
    check_kill_reaches_setsid_escapee(v1_cgroup[0])


@needs_v1
def test_v1_kill_catches_a_process_that_keeps_forking(v1_cgroup: tuple[RunCgroup, int]) -> None:
    cgroup, _ = v1_cgroup
    fork_loop = "while :; do sleep 1000 & done"
    proc = spawn_in(cgroup, ["/bin/sh", "-c", fork_loop])
    wait_until(lambda: len(cgroups.members(cgroup)) > 20, "the fork loop to fill the cgroup")
    assert cgroups.kill(cgroup)
    proc.wait(WAIT_SECONDS)
    assert cgroups.remove(cgroup)


@needs_v1
def test_kill_and_remove_aside_empties_and_removes_a_forking_cgroup(
    v1_cgroup: tuple[RunCgroup, int],
) -> None:
    """A failed launch's cgroup: one sweep on the caller's thread, the rest (a fork loop here,
    D-state members behind a hung filesystem in life) on a thread of its own, until it is gone."""
    cgroup, _ = v1_cgroup
    proc = spawn_in(cgroup, ["/bin/sh", "-c", "while :; do sleep 1000 & done"])
    wait_until(lambda: len(cgroups.members(cgroup)) > 20, "the fork loop to fill the cgroup")
    cgroups.kill_and_remove_aside(cgroup)
    proc.wait(WAIT_SECONDS)
    wait_until(lambda: not cgroup.path.exists(), "the cgroup removed")


@needs_v1
def test_remove_refuses_while_a_process_lives_then_succeeds(
    v1_cgroup: tuple[RunCgroup, int],
) -> None:
    cgroup, _ = v1_cgroup
    proc = spawn_in(cgroup, ["sleep", "1000"])
    wait_until(lambda: cgroups.members(cgroup) == [proc.pid], "the sleeper inside")
    assert cgroups.remove(cgroup, timeout=0.0) is False
    assert cgroup.path.is_dir()
    proc.kill()
    proc.wait(WAIT_SECONDS)
    assert cgroups.remove(cgroup)
    assert not cgroup.path.exists()


@needs_v1
def test_a_restarted_daemon_finds_leftovers_by_name_and_by_pid(
    v1_cgroup: tuple[RunCgroup, int],
) -> None:
    cgroup, _ = v1_cgroup
    proc = spawn_in(cgroup, ["sleep", "1000"])
    wait_until(lambda: cgroups.members(cgroup) == [proc.pid], "the sleeper inside")
    fresh = cgroups.detect()  # what a new daemon in the same cgroup sees
    assert cgroup in cgroups.leftovers(fresh)
    assert cgroups.find(fresh, cgroup.run_id) == cgroup
    assert cgroups.cgroup_of_pid(fresh, proc.pid) == cgroup
    assert cgroups.cgroup_of_pid(fresh, os.getpid()) is None  # we are in none of ours
    proc.kill()
    proc.wait(WAIT_SECONDS)


@needs_v1
def test_ensure_cap_sets_a_lost_cap_again_and_leaves_a_kept_one(
    v1_cgroup: tuple[RunCgroup, int],
) -> None:
    cgroup, cap = v1_cgroup
    assert cgroups.ensure_cap(cgroup, cap) is False
    assert cgroups.memory_report(cgroup).limit_bytes == cap
    # What a reset controller leaves: no limit (memsw first: it must stay >= the memory one).
    memsw = cgroup.path / "memory.memsw.limit_in_bytes"
    for path in (memsw, cgroup.path / "memory.limit_in_bytes"):
        if path.exists():
            path.write_text("-1")
    assert cgroups.memory_report(cgroup).limit_bytes is None
    assert cgroups.ensure_cap(cgroup, cap) is True
    assert cgroups.memory_report(cgroup).limit_bytes == cap
    if memsw.exists():
        assert int(memsw.read_text()) == cap


def test_ensure_cap_on_v2_writes_max_swap_and_group_kill(tmp_path: Path) -> None:
    # The files a v2 cgroup has once its memory controller is back on, in a plain folder.
    files = {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.oom.group": "0\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cgroup = RunCgroup(CgroupVersion.V2, tmp_path, new_run_id())
    assert cgroups.ensure_cap(cgroup, 64 * MIB) is True
    assert [(tmp_path / name).read_text() for name in files] == [str(64 * MIB), "0", "1"]
    assert cgroups.ensure_cap(cgroup, 64 * MIB) is False


def test_ensure_cap_without_the_controller_says_so(tmp_path: Path) -> None:
    cgroup = RunCgroup(CgroupVersion.V2, tmp_path, new_run_id())  # no memory.max at all
    with pytest.raises(CapError, match="cannot read the cap"):
        cgroups.ensure_cap(cgroup, 64 * MIB)


@needs_v1
def test_cleanup_leaves_no_cgroup_behind() -> None:
    made = [cgroups.create(SUPPORT, new_run_id(), 32 * MIB) for _ in range(3)]
    for cgroup in made:
        proc = spawn_in(cgroup, ["true"])
        assert proc.wait(WAIT_SECONDS) == 0
    for cgroup in made:
        assert cgroups.kill(cgroup)
        assert cgroups.remove(cgroup)
    left = {c.run_id for c in cgroups.leftovers(SUPPORT)}
    assert left.isdisjoint({c.run_id for c in made})
    assert not any(c.path.exists() for c in made)


@needs_v1
def test_create_replaces_an_empty_leftover_and_refuses_a_busy_one() -> None:
    run_id = new_run_id()
    first = cgroups.create(SUPPORT, run_id, 32 * MIB)
    again = cgroups.create(SUPPORT, run_id, 48 * MIB)  # an empty leftover of the same name
    assert cgroups.memory_report(again).limit_bytes == 48 * MIB
    proc = spawn_in(again, ["sleep", "1000"])
    try:
        wait_until(lambda: cgroups.members(again) == [proc.pid], "the sleeper inside")
        with pytest.raises(CapError, match="already holds processes"):
            cgroups.create(SUPPORT, run_id, 32 * MIB)
    finally:
        cgroups.kill(again)
        proc.wait(WAIT_SECONDS)
        assert cgroups.remove(first)


@needs_v1
def test_enter_moves_a_running_process_and_its_later_children() -> None:
    cgroup = cgroups.create(SUPPORT, new_run_id(), 64 * MIB)
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "read -r _; sleep 1000 & wait"],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    try:
        cgroups.enter(cgroup, proc.pid)
        proc.stdin.close()  # now it forks its child, which is born inside
        wait_until(lambda: len(cgroups.members(cgroup)) == 2, "the child born inside")
        assert proc.pid in cgroups.members(cgroup)
    finally:
        assert cgroups.kill(cgroup)
        proc.wait(WAIT_SECONDS)
        assert cgroups.remove(cgroup)


@needs_v1
def test_enter_and_create_fail_with_one_clear_line() -> None:
    assert SUPPORT.base is not None
    gone = RunCgroup(CgroupVersion.V1, SUPPORT.base / "runsup-000000000000", "000000000000")
    with pytest.raises(CapError, match="cannot move process"):
        cgroups.enter(gone, os.getpid())
    with pytest.raises(CapError, match="positive"):
        cgroups.create(SUPPORT, new_run_id(), 0)
    none = CapSupport(None, None, None, "memory caps cannot be enforced here: test")
    with pytest.raises(CapError, match="cannot be enforced here"):
        cgroups.create(none, new_run_id(), MIB)


# -- v2: what is real here (no memory controller) -----------------------------------------------


@needs_v2_tree
def test_v2_kill_reaches_a_setsid_escaped_grandchild(v2_support: CapSupport) -> None:
    cgroup = make_v2_run_cgroup(v2_support)
    assert (cgroup.path / "cgroup.kill").exists()  # the atomic v2 kill, not the v1 sweep
    check_kill_reaches_setsid_escapee(cgroup)


@needs_v2_tree
def test_v2_populated_leftovers_and_pid_lookup(v2_support: CapSupport) -> None:
    cgroup = make_v2_run_cgroup(v2_support)
    assert not cgroups.populated(cgroup)
    proc = spawn_in(cgroup, ["sleep", "1000"])
    wait_until(lambda: cgroups.populated(cgroup), "cgroup.events to say populated")
    assert cgroups.leftovers(v2_support) == [cgroup]
    assert cgroups.cgroup_of_pid(v2_support, proc.pid) == cgroup
    assert cgroups.kill(cgroup)
    proc.wait(WAIT_SECONDS)
    assert not cgroups.populated(cgroup)
    assert cgroups.remove(cgroup)
    assert cgroups.leftovers(v2_support) == []


@needs_v2_tree
def test_v2_create_without_a_memory_controller_fails_and_leaves_nothing(
    v2_support: CapSupport,
) -> None:
    with pytest.raises(CapError, match="cannot set up the memory cgroup"):
        cgroups.create(v2_support, new_run_id(), 64 * MIB)
    assert cgroups.leftovers(v2_support) == []


PREPARE_IN_CHILD = """
    import sys
    from pathlib import Path
    from supervisor.executors.local import cgroups
    base = Path(sys.argv[1])
    support = cgroups.CapSupport(cgroups.CgroupVersion.V2, base, base.parent, "test")
    print(cgroups.prepare(support).reason, flush=True)
    print(open("/proc/self/cgroup").read(), flush=True)
"""


@needs_v2_tree
def test_v2_prepare_moves_the_daemon_to_its_leaf_and_says_why_memory_fails(
    v2_support: CapSupport,
) -> None:
    assert v2_support.base is not None
    proc = subprocess.run(
        [*python(PREPARE_IN_CHILD), str(v2_support.base)],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=True,
    )
    reason, own = proc.stdout.split("\n", 1)
    assert f"0::/{v2_support.base.name}/{cgroups.DAEMON_LEAF}\n" in own
    assert "enabling the memory controller" in reason
    assert "Delegate=yes" in reason
