"""Cluster behaviour of the installed daemon that only a real cluster shows (issue 25 item 6):
`max_submitted`, the cluster's verdicts (node failure, a job the cluster no longer knows, a
job past its --mem), `on_stop = "cancel"` with jobs still queued, and a GUI's final status
written over a RUNNING cluster run (SPEC sections 3 and 6)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from daemon_harness import READY, group_alive, wait_for
from slurm_cluster import MIN_JOB_AGE_SECONDS, SlurmCluster
from slurm_daemon import JOB_DEADLINE, ClusterDaemon, started_daemon

FINAL = ("COMPLETED", "FAILED", "CANCELLED")
MAX_SUBMITTED = 2
RUNS_OVER_THE_LIMIT = 5
# squeue keeps a finished job for MinJobAge, the purge runs a few seconds later (SLURM.md).
PURGE_DEADLINE = MIN_JOB_AGE_SECONDS + 30.0
NODE_DEADLINE = 30.0  # the node back to idle after RESUME


@pytest.fixture
def daemon(tmp_path: Path, slurm_cluster: SlurmCluster) -> Iterator[ClusterDaemon]:
    """A started daemon sending `cl` runs to the test cluster (no accounting)."""
    with started_daemon(tmp_path, slurm_cluster) as d:
        yield d


def _our_live_jobs(cluster: SlurmCluster) -> list[str]:
    """Jobs of ours the controller has queued or running (not yet ended)."""
    out = cluster.run("squeue", "-h", "-o", "%j").stdout.split()
    return [name for name in out if name.startswith("runsup-")]


def test_max_submitted_bounds_the_jobs_in_the_cluster(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    extra = f"max_submitted = {MAX_SUBMITTED}"
    with started_daemon(tmp_path, slurm_cluster, executor_extra=extra) as daemon:
        # The default partition starts up to 8 jobs a CPU at once: only the limit holds them.
        ids = [daemon.submit({"sleep": 2}, template="cl") for _ in range(RUNS_OVER_THE_LIMIT)]
        most_in_cluster = 0
        most_rows_with_a_job = 0

        def all_final() -> bool:
            nonlocal most_in_cluster, most_rows_with_a_job
            most_in_cluster = max(most_in_cluster, len(_our_live_jobs(slurm_cluster)))
            rows = [daemon.run(r) for r in ids]
            with_job = [r for r in rows if r.status not in FINAL and r.external_id]
            most_rows_with_a_job = max(most_rows_with_a_job, len(with_job))
            return all(r.status in FINAL for r in rows)

        wait_for("every run to end", all_final, JOB_DEADLINE * 2)
        for run_id in ids:
            final = daemon.run(run_id)
            assert final.status == "COMPLETED", final.error_message
            assert daemon.jobs_named(run_id) in ([], [final.external_id])
        # Reached, never passed: the limit was what held the others back.
        assert most_in_cluster == MAX_SUBMITTED
        assert most_rows_with_a_job == MAX_SUBMITTED


def test_a_node_failure_fails_the_run_saying_so(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"sleep": 300, "progress": [READY]}, template="cl")
    running = daemon.wait_running(run_id)
    daemon.wait_set_up(run_id)
    node = daemon.cluster.node
    try:
        # What the controller does when a node stops answering: every job on it is ended.
        daemon.cluster.run("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=t")
        final = daemon.wait_final(run_id, JOB_DEADLINE)
    finally:
        daemon.cluster.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        wait_for("the node idle again", lambda: _node_idle(daemon.cluster), NODE_DEADLINE)
    assert final.status == "FAILED"
    assert (final.error_message or "").startswith("node failure"), final.error_message
    # Ended for good: the cluster did not requeue it to run the same attempt a second time.
    assert daemon.cluster.job_state(running.external_id or "") == "NODE_FAIL"


def _node_idle(cluster: SlurmCluster) -> bool:
    out = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
    return bool(out) and all(state == "idle" for state in out)


def test_a_job_the_cluster_no_longer_knows_fails_as_lost(daemon: ClusterDaemon) -> None:
    """The README's limit: a job killed outright (no exit file) and purged from the
    controller (no accounting) while the daemon was down is found "vanished"."""
    run_id = daemon.submit({"sleep": 300, "progress": [READY]}, template="cl")
    running = daemon.wait_running(run_id)
    daemon.wait_set_up(run_id)
    job_id = running.external_id or ""
    daemon.kill()
    # Killed outright on its node (as the OOM killer or a node's reboot does): the batch
    # script's whole group, its keeper too, so nothing writes the exit file.
    os.killpg(_batch_group(run_id), signal.SIGKILL)
    wait_for("the job purged", lambda: daemon.cluster.job_state(job_id) == "", PURGE_DEADLINE)
    exit_file = daemon.cluster_runs / run_id / ".runsup" / "exit"
    assert not exit_file.exists(), exit_file.read_text()
    daemon.start()
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "FAILED"
    assert (final.error_message or "").startswith("lost: the cluster has no record"), (
        final.error_message
    )
    assert running.pgid is not None
    wait_for("the stand-in to end", lambda: not group_alive(running.pgid or 0))


def _batch_group(run_id: str) -> int:
    """The process group of the run's batch script on the node (this machine)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(run_id in arg and arg.endswith("config.json") for arg in proc.info["cmdline"] or []):
            return os.getpgid(proc.pid)
    raise AssertionError(f"no simulation of run {run_id} found")


def test_a_job_past_its_memory_is_killed_and_fails(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """The test cluster enforces --mem by sampling (task/none, no cgroup): Slurm SIGKILLs the
    job and records FAILED, not OUT_OF_MEMORY (which needs task/cgroup; the OUT_OF_MEMORY
    reading is covered in tests/unit/test_slurm_jobs.py). What the daemon can say from that."""
    daemon = ClusterDaemon(tmp_path, slurm_cluster)
    try:
        daemon.write_config(
            f'[templates.hog]\n{_hog_command()}\nexecutor = "cluster"\nmemory_max = "100M"'
        )
        daemon.start()
        run_id = daemon.submit({}, template="hog")
        final = daemon.wait_final(run_id, JOB_DEADLINE)
    finally:
        daemon.close()
    assert final.status == "FAILED"
    assert final.exit_signal == signal.SIGKILL
    assert "SIGKILL" in (final.error_message or ""), final.error_message
    assert "exceeded memory limit" in (final.error_message or ""), final.error_message


def _hog_command() -> str:
    program = "import time; x = bytearray(400 << 20); time.sleep(30)"
    return f'command = [{json.dumps(sys.executable)}, "-c", "{program}"]'


def test_on_stop_cancel_cancels_queued_jobs(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    with started_daemon(tmp_path, slurm_cluster, on_stop="cancel") as daemon:
        blocker = daemon.submit({"sleep": 300}, template="whole")
        daemon.wait_running(blocker)
        queued = [daemon.submit({"sleep": 300}, template="whole") for _ in range(2)]
        jobs = [wait_for("a job id", lambda r=r: daemon.run(r).external_id) for r in queued]
        for job_id in jobs:
            daemon.cluster.wait_job_state(job_id, ["PENDING"], JOB_DEADLINE)
        assert all(daemon.run(r).status == "PENDING" for r in queued)
        assert daemon.stop() == 0
        for run_id in [blocker, *queued]:
            final = daemon.run(run_id)
            assert final.status == "CANCELLED", (run_id, final.status, final.error_message)
        assert all(daemon.run(r).started_at is None for r in queued)
        assert _our_live_jobs(slurm_cluster) == []


@pytest.mark.parametrize("daemon_down", [False, True], ids=["daemon-up", "daemon-down"])
def test_a_gui_cancelled_written_over_a_cluster_run_is_corrected(
    daemon: ClusterDaemon, daemon_down: bool
) -> None:
    """SPEC section 3: a final status another program writes over a live run is not a cancel;
    the run is supervised on (its job too) and its true outcome written over it, also when
    the GUI wrote it while the daemon was down."""
    gate = daemon.tmp / "gate"
    run_id = daemon.submit({"wait_for_file": str(gate), "progress": [READY]}, template="cl")
    running = daemon.wait_running(run_id)
    daemon.wait_set_up(run_id)
    if daemon_down:
        daemon.kill()
    with sqlite3.connect(daemon.db_path, isolation_level=None) as conn:
        conn.execute(
            "UPDATE runs SET status='CANCELLED', completed_at=strftime('%Y-%m-%d %H:%M:%f000',"
            " 'now') WHERE id=?",
            (run_id,),
        )
    if daemon_down:
        daemon.start()
    # A later run through the daemon: by its end the daemon has acted on the GUI's write.
    later = daemon.submit({}, template="cl")
    assert daemon.wait_final(later, JOB_DEADLINE).status == "COMPLETED"
    assert daemon.cluster.job_state(running.external_id or "") == "RUNNING"
    assert running.pgid is not None and group_alive(running.pgid)
    gate.write_text("go")
    rec = wait_for(
        "the true outcome written over the GUI's",
        lambda: r if (r := daemon.run(run_id)).status == "COMPLETED" else None,
        JOB_DEADLINE,
    )
    assert rec.exit_code == 0
    daemon.wait_logged("run_outcome_corrected", run_id=run_id, was="CANCELLED", now="COMPLETED")
    assert daemon.jobs_named(run_id) == [running.external_id]


def test_a_gui_killpg_of_a_cluster_run_while_the_daemon_is_down(daemon: ClusterDaemon) -> None:
    """A GUI written for local runs SIGTERMs the row's pgid (the stand-in) while no daemon
    runs: the job gets it, and the next daemon records how the simulation really ended."""
    run_id = daemon.submit({"sleep": 300, "progress": [READY]}, template="cl")
    running = daemon.wait_running(run_id)
    daemon.wait_set_up(run_id)
    daemon.kill()
    assert running.pgid is not None
    os.killpg(running.pgid, signal.SIGTERM)
    job_id = running.external_id or ""
    daemon.cluster.wait_job_state(job_id, ["FAILED", "CANCELLED", "COMPLETED"], JOB_DEADLINE)
    daemon.start()
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert (final.status, final.exit_signal) == ("CANCELLED", signal.SIGTERM), final.error_message
    assert "another process" in (final.error_message or "")
    wait_for("the stand-in to end", lambda: not group_alive(running.pgid or 0))
