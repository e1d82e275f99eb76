"""Every promise on each kernel class (issue 19): the installed daemon run under a seccomp filter
that refuses what older kernels lack (tests/kernelclass.py), inherited by all it starts.

- none: no pidfds (Linux before 5.3, RHEL 8's 4.18);
- nogroup: pidfds without PIDFD_SIGNAL_PROCESS_GROUP (5.3 to 6.8: Ubuntu 22.04/24.04, RHEL 9);
- full: this kernel as it is.

Under each: exit codes, cancel with escalation, leftovers of an exited leader stopped before
the final row, a restart that finds the leader already gone (its leftovers stopped too) or the
run still going (adopted, its exit seen), runs another program started, memory caps, and the
stand-in of a Slurm job.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import kernelclass
import pytest
from daemon_harness import READY, DaemonHarness, group_alive, pid_alive, wait_for
from foreign_runs import GuiRun
from slurm_cluster import SlurmCluster
from slurm_daemon import JOB_DEADLINE, ClusterDaemon

from supervisor.executors.local import cgroups

CLASSES = kernelclass.CLASSES
GRACE_SECONDS = 1
SUPPORT = cgroups.detect()
ESCAPE = (
    "import subprocess, time\n"
    "subprocess.Popen(['setsid', 'sleep', '300'])\n"
    "open('escaped', 'w').write('1')\n"
    "time.sleep(300)\n"
)


@pytest.fixture(params=CLASSES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonHarness]:
    """A daemon harness (not started) whose daemon runs as on the class's kernel."""
    if why := kernelclass.looser_than_session(request.param):
        pytest.skip(why)
    h = DaemonHarness(
        tmp_path,
        kernel_class=request.param,
        cancel_grace_seconds=GRACE_SECONDS,
        max_concurrent_runs=8,
    )
    script = tmp_path / "escaper.py"  # a file: braces in a command are placeholders
    script.write_text(ESCAPE)
    command = json.dumps([sys.executable, str(script)])
    h.write_config(f'[templates.escaper]\ncommand = {command}\nmemory_max = "256M"\n')
    yield h
    h.close()


def means_logged(h: DaemonHarness) -> dict[str, object]:
    """The kernel means the daemon found, from its log."""
    return h.wait_logged("kernel_means")


def assert_means_match(h: DaemonHarness) -> None:
    found = means_logged(h)
    assert found["pidfds"] == (h.kernel_class != "none"), found
    assert found["group_signals"] == (h.kernel_class == "full"), found


def final_with_group_gone(h: DaemonHarness, run_id: str) -> dict[str, object]:
    """Wait for the run's final row; nothing of its group may live once it is there."""
    rec = h.wait_final(run_id)
    assert rec.pgid is not None
    assert not group_alive(rec.pgid), f"{h.kernel_class}: a final row with its group alive"
    return {"status": rec.status, "exit_code": rec.exit_code, "exit_signal": rec.exit_signal}


def test_exit_codes_cancel_and_leftovers(harness: DaemonHarness) -> None:
    harness.start()
    assert_means_match(harness)
    failed = harness.submit({"exit_code": 3})
    # The leader exits 0 and leaves children in its group: they are stopped before the row is
    # final, with SIGTERM, and with SIGKILL after the grace when they ignore it.
    leaves = harness.submit({"children": 2, "exit_code": 0})
    stubborn = harness.submit({"children": 1, "ignore_term": True, "exit_code": 0})
    cancelled = harness.submit({"ignore_term": True, "sleep": 60, "progress": [READY]})
    harness.wait_set_up(cancelled)
    harness.store.request_cancel(cancelled)
    assert final_with_group_gone(harness, failed) == {
        "status": "FAILED", "exit_code": 3, "exit_signal": None
    }
    for run_id in (leaves, stubborn):
        assert final_with_group_gone(harness, run_id)["status"] == "COMPLETED"
    harness.wait_logged("run_killed", run_id=stubborn)  # its leftover ignored SIGTERM
    assert final_with_group_gone(harness, cancelled) == {
        "status": "CANCELLED", "exit_code": None, "exit_signal": signal.SIGKILL
    }


def test_restart_stops_leftovers_and_adopts_live_runs(harness: DaemonHarness) -> None:
    gate = harness.tmp / "gate"
    # Ends while no daemon watches, leaving a child (that ignores SIGTERM) in its group.
    ended = harness.submit(
        {"children": 1, "ignore_term": True, "wait_for_file": str(gate), "progress": [READY]}
    )
    # Still running at the restart: adopted, and its exit code seen.
    lives = harness.submit(
        {"wait_for_file": str(harness.tmp / "gate2"), "exit_code": 5, "progress": [READY]}
    )
    harness.start()
    leader, pgid = harness.wait_set_up(ended)
    harness.wait_set_up(lives)
    harness.kill()
    gate.write_text("")
    wait_for("the leader to end", lambda: not pid_alive(leader))
    assert group_alive(pgid), "its child lives on while no daemon watches"
    harness.start()
    assert final_with_group_gone(harness, ended)["status"] == "COMPLETED"
    harness.wait_logged("run_adopted", run_id=lives)
    (harness.tmp / "gate2").write_text("")
    assert final_with_group_gone(harness, lives) == {
        "status": "FAILED", "exit_code": 5, "exit_signal": None
    }


def test_foreign_runs(harness: DaemonHarness) -> None:
    harness.start()
    gui = GuiRun(harness, {"ignore_term": True, "sleep": 60, "progress": [READY]})
    ended = GuiRun(harness, {"sleep": 60, "progress": [READY]})
    try:
        harness.wait_logged("foreign_run_adopted", run_id=gui.run_id)
        harness.wait_logged("foreign_run_adopted", run_id=ended.run_id)
        wait_for("its handlers set", lambda: harness.run(gui.run_id).total_iterations == 3)
        harness.store.request_cancel(gui.run_id)
        assert harness.wait_final(gui.run_id).status == "CANCELLED"
        assert gui.proc.wait(10) == -signal.SIGKILL, "SIGTERM ignored, then SIGKILL"
        ended.proc.kill()  # it ends on its own: exit status unknown to the daemon
        assert harness.wait_final(ended.run_id).status == "FAILED"
    finally:
        gui.close()
        ended.close()


@pytest.mark.tier("cgroup")
@pytest.mark.skipif(not SUPPORT.enforced, reason=f"no memory caps: {SUPPORT.reason}")
def test_a_capped_run_s_cancel_reaches_what_left_its_group(harness: DaemonHarness) -> None:
    harness.start()
    run_id = harness.submit({}, template="escaper")
    wait_for("the escapee started", (harness.runs_dir / run_id / "escaped").exists)
    cg = cgroups.find(SUPPORT, run_id)
    assert cg is not None
    members = cgroups.members(cg)
    assert len(members) >= 2
    harness.store.request_cancel(run_id)
    assert harness.wait_final(run_id).status == "CANCELLED"
    wait_for("every process of its cgroup gone", lambda: not any(pid_alive(p) for p in members))


# "full" is test_slurm_executor.py's test_cancel_escalates_for_a_job_that_ignores_sigterm.
@pytest.mark.parametrize("kernel_class", ["none", "nogroup"])
def test_a_cluster_run_s_stand_in(
    tmp_path: Path, slurm_cluster: SlurmCluster, kernel_class: str
) -> None:
    """The stand-in of a Slurm job (pid, pgid of the row) lives while the job does, and a
    cancel escalates to the end of both, whatever the daemon's kernel offers."""
    if why := kernelclass.looser_than_session(kernel_class):
        pytest.skip(why)
    daemon = ClusterDaemon(tmp_path, slurm_cluster, kernel_class=kernel_class)
    daemon.start()
    try:
        run_id = daemon.submit(
            {"ignore_term": True, "sleep": 300, "progress": [READY]}, template="cl"
        )
        running = daemon.wait_running(run_id)
        assert running.pgid is not None and group_alive(running.pgid)
        daemon.wait_set_up(run_id)
        daemon.ask_cancel(run_id)
        final = daemon.wait_final(run_id, JOB_DEADLINE)
        assert final.status == "CANCELLED" and final.exit_signal == signal.SIGKILL
        wait_for("the stand-in to end", lambda: not group_alive(running.pgid or 0))
    finally:
        daemon.close()
