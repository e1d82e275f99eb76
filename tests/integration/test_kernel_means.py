"""The local executor's means on each kernel class, with real processes (issue 19).

The probe is run under the real seccomp filter of each class (tests/kernelclass.py); the
fallback decisions of GroupWatch and KeeperWatch are run here with a KernelMeans that forbids
what an older kernel lacks (the fallbacks only use what every class has).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kernelclass
import pytest

from supervisor.executors.base import Adopted, ExitStatus, LaunchSpec, ProcessIdentity, RunRef
from supervisor.executors.local.executor import LocalExecutor
from supervisor.executors.local.groupwatch import GroupWatch
from supervisor.executors.local.identity import current_boot_id, identify, open_pidfd
from supervisor.executors.local.keeperwatch import KeeperWatch
from supervisor.executors.local.means import FULL, KernelMeans

DEADLINE = 10.0
POLL = 0.01
NOGROUP = KernelMeans(pidfds=True, group_signals=False)
NONE = KernelMeans(pidfds=False, group_signals=False)
MEANS = {"full": FULL, "nogroup": NOGROUP, "none": NONE}
# A leader that starts a child in its group, says both pids, and exits when told (stdin EOF).
LEADER = (
    "import json, os, subprocess, sys\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "print(json.dumps([os.getpid(), child.pid]), flush=True)\n"
    "sys.stdin.read()\n"
)


def means_for(kernel_class: str) -> KernelMeans:
    """The means of a class; skipped when this session's own filter is stricter."""
    if why := kernelclass.looser_than_session(kernel_class):
        pytest.skip(why)
    return MEANS[kernel_class]


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL)


@pytest.mark.parametrize("kernel_class", kernelclass.CLASSES)
def test_the_probe_finds_what_each_kernel_class_gives(kernel_class: str) -> None:
    if why := kernelclass.looser_than_session(kernel_class):
        pytest.skip(why)
    code = (
        "import json; from supervisor.executors.local.means import probe; m = probe();"
        " print(json.dumps([m.pidfds, m.group_signals]))"
    )
    argv = kernelclass.wrap(kernel_class, [sys.executable, "-c", code])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE, check=True)
    expected = MEANS[kernel_class]
    assert json.loads(out.stdout) == [expected.pidfds, expected.group_signals]


class Group:
    """A leader (own session) and its child; every process ended at the end."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LEADER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.leader_pid, self.child_pid = json.loads(self.proc.stdout.readline())
        found = identify(self.leader_pid)
        assert found is not None
        self.leader: ProcessIdentity = found

    def end_leader(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(DEADLINE)  # reaped: only its child is left in the group

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child_pid, signal.SIGKILL)


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group()
    yield g
    g.close()


def watch_of(g: Group, means: KernelMeans) -> GroupWatch:
    fd = open_pidfd(g.leader, zombie_ok=True) if means.pidfds else None
    return GroupWatch(
        g.leader.pid,
        g.leader.boot_id,
        means=means,
        leader=g.leader,
        leader_pidfd=fd,
        earliest_ticks=g.leader.start_ticks,
    )


@pytest.mark.parametrize("kernel_class", kernelclass.CLASSES)
def test_a_group_whose_leader_is_gone_is_still_signalled_and_watched(
    group: Group, kernel_class: str
) -> None:
    means = means_for(kernel_class)
    watch = watch_of(group, means)
    try:
        group.end_leader()
        assert watch.alive(), "the child left in the group is alive"
        assert (watch.fileno() is not None) is means.pidfds  # else a timer with backoff
        assert watch.signal(signal.SIGKILL) is True
        wait_for(lambda: not watch.alive(), "the group to be empty")
        assert identify(group.child_pid) is None
    finally:
        watch.close()


@pytest.mark.parametrize("kernel_class", kernelclass.CLASSES)
def test_a_member_born_before_the_leader_is_not_the_run_s(
    group: Group, kernel_class: str
) -> None:
    """The record says the leader started later than it did (as if its pid had been reused by
    this group): nothing of this group counts, nothing is signalled."""
    means = means_for(kernel_class)
    later = ProcessIdentity(group.leader.pid, group.leader.start_ticks + 1, current_boot_id())
    watch = GroupWatch(
        later.pid, later.boot_id, means=means, leader=later, earliest_ticks=later.start_ticks
    )
    try:
        assert not watch.alive()
        assert not watch.signal(signal.SIGKILL)
        assert group.proc.poll() is None and identify(group.child_pid) is not None
    finally:
        watch.close()


def test_the_backoff_doubles_and_starts_again_after_a_sigkill(group: Group) -> None:
    watch = watch_of(group, NONE)
    try:
        delays = [watch.next_delay() for _ in range(4)]
        assert delays == sorted(delays) and delays[1] == 2 * delays[0]
        watch.signal(signal.SIGKILL)
        assert watch.next_delay() == delays[0]
    finally:
        watch.close()


def test_a_keeper_s_end_through_its_report_pipe(tmp_path: Path) -> None:
    """No pidfds: our child's end is EOF on the pipe only it holds; it is reaped by pid."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(["sh", "-c", "read x; exit 4"], stdin=subprocess.PIPE,
                            pass_fds=(write_end,))  # fmt: skip
    os.close(write_end)
    found = identify(proc.pid)
    assert found is not None
    watch = KeeperWatch(found, pipe_fd=read_end, child=True)
    try:
        assert watch.fileno() == read_end and not watch.ended()
        assert proc.stdin is not None
        proc.stdin.close()
        wait_for(watch.ended, "EOF on the report pipe")
        result = watch.reap_status()
        assert result is not None and result.si_status == 4
    finally:
        watch.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_an_adopted_keeper_without_pidfds_is_looked_at_on_a_timer() -> None:
    proc = subprocess.Popen(["sleep", "300"])
    found = identify(proc.pid)
    assert found is not None
    watch = KeeperWatch(found)
    try:
        assert watch.fileno() is None and not watch.ended()
        proc.kill()
        proc.wait()
        assert watch.ended()
        assert watch.reap_status() is None  # not ours to reap (another daemon's child)
    finally:
        watch.close()


def test_without_pidfds_an_adopted_run_s_end_comes_from_the_executor_s_poll(
    tmp_path: Path,
) -> None:
    """A restarted daemon's executor looks at adopted keepers on its timer, all in one pass,
    further apart while none ends; poll() names the run once its keeper is gone."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = LaunchSpec(
        run_id="r1",
        argv=["/bin/sh", "-c", "while [ ! -e release ]; do sleep 0.02; done; exit 6"],
        cwd=run_dir,
        env={"PATH": "/usr/bin:/bin"},
        log_path=run_dir / "sim.log",
        record_dir=run_dir / ".runsup",
    )
    first = LocalExecutor(means=NONE).launch(spec)
    try:
        later = LocalExecutor(means=NONE)  # as after a restart
        assert later.poll_interval is None
        found = later.recover(RunRef("r1", spec.record_dir, first.record))
        assert isinstance(found, Adopted)
        adopted = found.handle
        assert adopted.fileno() is None
        assert later.poll_interval is not None
        assert later.poll() == ()  # the first look: still running
        first_wait = later.poll_interval
        wait_for(lambda: later.poll_interval == 0.0, "the next look to be due")
        assert later.poll() == ()
        assert later.poll_interval > first_wait  # looks further apart while it runs on
        (run_dir / "release").touch()
        wait_for(lambda: later.poll() == ("r1",), "the poll to name the ended run")
        assert adopted.exit_status() == ExitStatus(6, None)
        assert later.poll_interval is None  # nothing left to look at
        adopted.close()
    finally:
        if first.group_alive():
            first.signal_group(signal.SIGKILL)
        wait_for(lambda: first.exit_status() is not None, "the first handle to see the end")
        first.close()
