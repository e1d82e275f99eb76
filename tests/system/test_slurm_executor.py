"""The Slurm executor through the installed daemon, on the real single-node test cluster.

A template with `executor = "cluster"` sends its runs to Slurm; the tests look at what users
and other programs see: the row's statuses, pid/pgid (the stand-in), host, external_id, the
outcome, and the cluster's own view of the job.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import READY, group_alive, wait_for
from slurm_cluster import SlurmCluster
from slurm_daemon import GRACE_SECONDS, JOB_DEADLINE, ClusterDaemon, started_daemon

from supervisor.db import final_change
from supervisor.states import RunStatus


@pytest.fixture
def daemon(tmp_path: Path, slurm_cluster: SlurmCluster) -> Iterator[ClusterDaemon]:
    """A started daemon sending `cl` runs to the test cluster (no accounting)."""
    with started_daemon(tmp_path, slurm_cluster) as d:
        yield d


@pytest.fixture
def any_daemon(tmp_path: Path, any_slurm_cluster: SlurmCluster) -> Iterator[ClusterDaemon]:
    """The same, once on the cluster without accounting and once with slurmdbd + MariaDB."""
    with started_daemon(tmp_path, any_slurm_cluster) as d:
        yield d


def test_run_completes_on_the_cluster(any_daemon: ClusterDaemon) -> None:
    daemon = any_daemon
    progress = [{"type": "start", "config": {"total_iterations": 2}}, {"type": "iteration"}]
    run_id = daemon.submit({"progress": progress, "sleep": 1}, template="cl")
    pending = wait_for("the job id in the PENDING row", lambda: daemon.run(run_id).external_id)
    assert daemon.jobs_named(run_id) == [pending]
    running = daemon.wait_running(run_id)
    assert running.executor == "cluster"
    assert running.host == daemon.cluster.node
    assert running.pid and running.pgid == running.pid  # the stand-in leads its group
    assert running.keeper_pid
    assert group_alive(running.pgid)
    assert daemon.cluster.job_state(pending) in ("RUNNING", "COMPLETING", "COMPLETED")
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert final.exit_code == 0
    assert final.external_id == pending
    assert final.total_iterations == 2
    wait_for("the stand-in to end", lambda: not group_alive(running.pgid))
    assert (daemon.cluster_runs / run_id / "logs" / "sim.log").exists()


def test_exit_code_is_the_simulations(any_daemon: ClusterDaemon) -> None:
    run_id = any_daemon.submit({"exit_code": 7, "stdout": "bad input"}, template="cl")
    final = any_daemon.wait_final(run_id, JOB_DEADLINE)
    assert (final.status, final.exit_code, final.exit_signal) == ("FAILED", 7, None)
    assert "bad input" in (final.error_message or "")


def test_crash_signal_fails_the_run(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"signal_self": signal.SIGSEGV}, template="cl")
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert (final.status, final.exit_signal) == ("FAILED", signal.SIGSEGV)
    assert "SIGSEGV" in (final.error_message or "")


def test_cancel_escalates_for_a_job_that_ignores_sigterm(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"ignore_term": True, "sleep": 300, "progress": [READY]}, template="cl")
    daemon.wait_running(run_id)
    daemon.wait_set_up(run_id)
    daemon.ask_cancel(run_id)
    daemon.wait_logged("run_terminating", run_id=run_id)
    # The job outlives SIGTERM and Slurm's KillWait; the daemon's grace ends it.
    daemon.wait_logged("run_killed", run_id=run_id, deadline=GRACE_SECONDS + 10)
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "CANCELLED"
    assert final.exit_signal == signal.SIGKILL
    # SIGTERM first, SIGKILL only after it: the escalation, in the daemon's own order.
    order = [
        e["event"]
        for e in daemon.log_events()
        if e.get("run_id") == run_id and e["event"] in ("run_terminating", "run_killed")
    ]
    assert order == ["run_terminating", "run_killed"], order


def test_cancel_of_a_queued_job_removes_it(daemon: ClusterDaemon) -> None:
    blocker = daemon.submit({"sleep": 300}, template="whole")
    daemon.wait_running(blocker)
    waiter = daemon.submit({"sleep": 1}, template="whole")
    job_id = wait_for("the waiter's job id", lambda: daemon.run(waiter).external_id)
    daemon.cluster.wait_job_state(job_id, ["PENDING"], JOB_DEADLINE)
    assert daemon.run(waiter).status == "PENDING"
    daemon.ask_cancel(waiter)
    final = daemon.wait_final(waiter)
    assert final.status == "CANCELLED"
    assert final.started_at is None
    assert daemon.cluster.wait_job_state(job_id, ["CANCELLED"], JOB_DEADLINE) == "CANCELLED"
    daemon.ask_cancel(blocker)
    assert daemon.wait_final(blocker, JOB_DEADLINE).status == "CANCELLED"


def test_sigterm_to_the_stand_in_reaches_the_job(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"sleep": 300, "progress": [READY]}, template="cl")
    running = daemon.wait_running(run_id)
    daemon.wait_set_up(run_id)
    assert running.pgid is not None
    os.killpg(running.pgid, signal.SIGTERM)  # as a GUI written for local runs does
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert (final.status, final.exit_signal) == ("CANCELLED", signal.SIGTERM)
    assert "another process" in (final.error_message or "")


def test_sigkill_of_the_stand_in_cancels_the_job(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"sleep": 300}, template="cl")
    running = daemon.wait_running(run_id)
    assert running.pgid is not None and running.external_id is not None
    os.killpg(running.pgid, signal.SIGKILL)
    assert daemon.cluster.wait_job_state(running.external_id, ["CANCELLED"], JOB_DEADLINE)
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "CANCELLED"


@pytest.mark.parametrize("point", ["launch_claimed", "launch_spawned"])
def test_daemon_killed_while_submitting_submits_once(daemon: ClusterDaemon, point: str) -> None:
    daemon.stop()
    daemon.start(env={"RUNSUP_TEST_CRASH_POINT": point})
    run_id = daemon.submit({"sleep": 1}, template="cl")
    daemon.wait_exit()
    daemon.start()
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert daemon.jobs_named(run_id) == [final.external_id]


def test_daemon_killed_while_jobs_run_loses_nothing(any_daemon: ClusterDaemon) -> None:
    daemon = any_daemon
    gate = daemon.tmp / "gate"
    ends_away = daemon.submit({"sleep": 1, "exit_code": 4}, template="cl")
    goes_on = daemon.submit({"wait_for_file": str(gate)}, template="cl")
    first = {r: daemon.wait_running(r) for r in (ends_away, goes_on)}
    daemon.kill()
    wait_for(
        "the first job to end while the daemon is down",
        lambda: daemon.cluster.job_state(first[ends_away].external_id or "") == "FAILED",
        JOB_DEADLINE,
    )
    daemon.start()
    assert daemon.wait_final(ends_away, JOB_DEADLINE).exit_code == 4
    again = daemon.run(goes_on)
    assert (again.status, again.pid) == ("RUNNING", first[goes_on].pid)  # the same stand-in
    gate.write_text("go")
    final = daemon.wait_final(goes_on, JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    for run_id in (ends_away, goes_on):
        assert daemon.jobs_named(run_id) == [first[run_id].external_id]


def test_a_restarted_daemon_ends_the_stand_in_of_a_run_settled_before_it_died(
    daemon: ClusterDaemon,
) -> None:
    """A daemon killed after committing a run's final status, before its stand-in was told to
    go: the next daemon does not take the run on again (its row is final), and ends the
    stand-in all the same (it would wait for ever)."""
    run_id = daemon.submit({"sleep": 300, "progress": [READY]}, template="cl")
    running = daemon.wait_running(run_id)
    assert running.pgid is not None
    daemon.kill()
    # What the killed daemon had committed through its own write path (status and event): the
    # run final. (A final status written by another program is taken back instead.)
    settled = final_change(run_id, RunStatus.COMPLETED, reason="exited", exit_code=0)
    assert daemon.store.commit_batch([settled]) == [True]
    assert group_alive(running.pgid)
    daemon.start()
    daemon.wait_logged("slurm_standin_left_over")
    wait_for("the left-over stand-in to end", lambda: not group_alive(running.pgid))


def test_after_a_reboot_the_job_gets_a_new_stand_in(daemon: ClusterDaemon) -> None:
    gate = daemon.tmp / "gate"
    run_id = daemon.submit({"wait_for_file": str(gate)}, template="cl")
    before = daemon.wait_running(run_id)
    assert before.pid is not None
    daemon.kill()
    # A reboot of the daemon's machine: every local process gone (the watcher first, or it
    # would cancel the job), the boot id new; the job on its node goes on.
    watcher = int(Path(f"/proc/{before.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.killpg(watcher, signal.SIGKILL)  # the watcher leads a group: it and its checker
    os.kill(before.pid, signal.SIGKILL)
    wait_for("the old stand-in gone", lambda: not group_alive(before.pid or 0))
    (daemon.cluster_runs / run_id / ".runsup" / "boot_id").write_text("an-earlier-boot\n")
    daemon.start()
    after = wait_for(
        "the row to name the new stand-in",
        lambda: r if (r := daemon.run(run_id)).pid != before.pid else None,
    )
    assert after.status == "RUNNING"
    assert after.pgid is not None and group_alive(after.pgid)
    gate.write_text("go")
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert daemon.jobs_named(run_id) == [before.external_id]


def test_a_controller_that_does_not_answer_is_unknown_not_finished(
    daemon: ClusterDaemon,
) -> None:
    gate = daemon.tmp / "gate"
    run_id = daemon.submit({"wait_for_file": str(gate)}, template="cl")
    daemon.wait_running(run_id)
    controller = daemon.cluster.processes["slurmctld"].pid
    os.kill(controller, signal.SIGSTOP)
    try:
        gate.write_text("go")  # the simulation ends; its keeper writes the exit file
        exit_file = daemon.cluster_runs / run_id / ".runsup" / "exit"
        wait_for("the keeper's exit file", exit_file.exists, JOB_DEADLINE)
        daemon.wait_logged("slurm_query_failed", deadline=JOB_DEADLINE)
        assert daemon.run(run_id).status == "RUNNING"  # a timeout is no answer
    finally:
        os.kill(controller, signal.SIGCONT)
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message


@pytest.mark.slow
def test_time_limit_of_the_cluster_fails_as_timeout(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    # Slurm's own limit (one minute, checked every ~30 s), no limit of the daemon's.
    with started_daemon(
        tmp_path, slurm_cluster, executor_extra='sbatch_args = ["--time=1"]'
    ) as daemon:
        run_id = daemon.submit({"sleep": 300}, template="cl")
        daemon.wait_running(run_id)
        final = daemon.wait_final(run_id, 150.0)
        assert final.status == "FAILED"
        assert (final.error_message or "").startswith("timeout"), final.error_message
