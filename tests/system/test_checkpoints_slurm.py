"""Long runs on the real test cluster (SPEC sections 9, 11 and 15; issue 21): checkpoints,
resume, preemption and one job per attempt.

The simulation (tests/sims/ckptsim.py) computes 10 steps, saves its step to checkpoint.json in
its run directory on SIGUSR1 and starts from it when RUNSUP_RESUME=1; steps.log shows every
step each attempt computed (a step computed twice is lost work). Every finished job is in the
cluster's jobcomp file with its start and end, so "never two jobs at once" is checked on the
cluster's own record.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from ckpt_harness import ckpt_template, recomputed, signals_seen, steps_done
from daemon_harness import wait_for
from slurm_cluster import HIGH_PARTITION, LOW_PARTITION, SlurmCluster
from slurm_daemon import JOB_DEADLINE, POLL_INTERVAL, ClusterDaemon

from supervisor.daemon import CRASH_POINT_VARIABLE

STEPS = 10
# A preempted job: its warning at once, SIGTERM after GraceTime plus slurmctld's periodic
# check (up to ~30 s), then the next attempt waits until the preempting job is done.
PREEMPT_DEADLINE = 180.0
HIGH_JOB_SECONDS = 6
# Attempts of one to one and a half minutes (Slurm's limit and its 30 s sweep), a few of them.
SLOW_DEADLINE = 600.0
_JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")


def _executors(cluster: ClusterDaemon) -> str:
    """[executors.low]: the partition a `high` job preempts."""
    return "\n".join(
        [
            "[executors.low]",
            'kind = "slurm"',
            f'runs_dir = "{cluster.cluster_runs}"',
            f'partition = "{LOW_PARTITION}"',
            f"poll_interval_seconds = {POLL_INTERVAL}",
            "command_timeout_seconds = 5",
            "",
        ]
    )


@pytest.fixture
def daemon(tmp_path: Path, slurm_cluster: SlurmCluster) -> Iterator[ClusterDaemon]:
    """A daemon with checkpointing templates on the `cluster` and `low` executors."""
    d = ClusterDaemon(tmp_path, slurm_cluster)
    templates = ckpt_template(
        "preemptible",
        executor="low",
        max_attempts=3,
        retry_delay_seconds=0,
        resume=True,
        checkpoint_signal="USR1",
        checkpoint_seconds=30,
    ) + ckpt_template(
        "selfckpt",
        executor="cluster",
        max_attempts=1,
        resume=True,
        checkpoint_exit_code=85,
    )
    d.write_config(templates + _executors(d))
    d.start()
    yield d
    d.close()


def _run_dir(daemon: ClusterDaemon, run_id: str) -> Path:
    return daemon.cluster_runs / run_id


def _jobcomp(cluster: SlurmCluster, run_id: str) -> list[dict[str, str]]:
    """The cluster's record of every finished job of the run (jobcomp/filetxt), oldest first."""
    path = cluster.base / "jobcomp" / "jobcomp.txt"
    jobs = []
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = dict(_JOBCOMP_FIELD.findall(line))
        if fields.get("Name", "").startswith(f"runsup-{run_id}-"):
            jobs.append(fields)
    return sorted(jobs, key=lambda job: int(job["JobId"]))


def _assert_one_job_per_attempt_never_two_at_once(
    daemon: ClusterDaemon, run_id: str, attempts: int
) -> None:
    jobs = _jobcomp(daemon.cluster, run_id)
    names = [job["Name"] for job in jobs]
    assert names == [f"runsup-{run_id}-{n}" for n in range(1, attempts + 1)], names
    for before, after in itertools.pairwise(jobs):
        ended = datetime.fromisoformat(before["EndTime"])
        assert datetime.fromisoformat(after["StartTime"]) >= ended, (before, after)


def _preempt(cluster: SlurmCluster) -> str:
    """A job in the high partition that needs every CPU of the node: it preempts ours."""
    out = cluster.run(
        "sbatch",
        "--parsable",
        f"--partition={HIGH_PARTITION}",
        f"--cpus-per-task={cluster.cpus}",
        "--output=/dev/null",
        f"--wrap=sleep {HIGH_JOB_SECONDS}",
    )
    return out.stdout.strip()


def test_a_preempted_run_resumes_and_completes(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"steps": STEPS, "step_seconds": 1.0}, template="preemptible")
    run_dir = _run_dir(daemon, run_id)
    first = daemon.wait_running(run_id)
    wait_for("two steps done", lambda: len(steps_done(run_dir)) >= 2, JOB_DEADLINE)
    _preempt(daemon.cluster)
    wait_for(
        "the warning to reach the simulation through the batch script",
        lambda: any(a == 1 and name == "SIGUSR1" for a, name, _ in signals_seen(run_dir)),
        JOB_DEADLINE,
    )
    final = daemon.wait_final(run_id, PREEMPT_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert final.attempt == 2
    assert final.external_id != first.external_id
    reasons = [e.reason or "" for e in daemon.store.events(run_id)]
    assert any("ended preempted" in r for r in reasons), reasons
    # Nothing computed twice: the step under way at the warning was not finished, and the
    # second attempt started from the checkpoint.
    assert [s for _, s in steps_done(run_dir)] == list(range(1, STEPS + 1))
    assert {a for a, _ in steps_done(run_dir)} == {1, 2}
    _assert_one_job_per_attempt_never_two_at_once(daemon, run_id, 2)


def test_checkpoint_exit_code_starts_again_beyond_max_attempts(daemon: ClusterDaemon) -> None:
    # max_attempts = 1: every restart here is a checkpoint, none a retry.
    config = {"steps": 7, "step_seconds": 0.1, "checkpoint_every": 3}
    run_id = daemon.submit(config, template="selfckpt")
    final = daemon.wait_final(run_id, 4 * JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert final.attempt == 3  # 3 + 3 + 1 steps
    events = daemon.store.events(run_id)
    checkpointed = [e for e in events if (e.reason or "").startswith("checkpointed")]
    assert len(checkpointed) == 2
    assert all(e.to_status == "PENDING" for e in checkpointed)
    assert [s for _, s in steps_done(_run_dir(daemon, run_id))] == list(range(1, 8))
    _assert_one_job_per_attempt_never_two_at_once(daemon, run_id, 3)


def test_another_exit_code_follows_retry_on(daemon: ClusterDaemon) -> None:
    """Exit 3 is no checkpoint: with max_attempts = 1 and no "exit:3" in retry_on, FAILED."""
    run_id = daemon.submit(
        {"steps": 5, "step_seconds": 0.1, "checkpoint_every": 2, "exit_code": 3},
        template="selfckpt",
    )
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert (final.status, final.exit_code) == ("FAILED", 3)
    assert final.attempt in (None, 1)  # the first attempt's row keeps attempt NULL today


def test_a_cancel_while_the_next_attempt_waits_is_never_resumed(daemon: ClusterDaemon) -> None:
    run_id = daemon.submit({"steps": STEPS, "step_seconds": 1.0}, template="preemptible")
    run_dir = _run_dir(daemon, run_id)
    daemon.wait_running(run_id)
    wait_for("a step done", lambda: len(steps_done(run_dir)) >= 1, JOB_DEADLINE)
    high = _preempt(daemon.cluster)
    # Attempt 2 is submitted and waits behind the high job: cancel it there.
    wait_for(
        "attempt 2's job in the queue",
        lambda: (r := daemon.run(run_id)).attempt == 2 and r.external_id,
        PREEMPT_DEADLINE,
    )
    daemon.ask_cancel(run_id)
    final = daemon.wait_final(run_id, JOB_DEADLINE)
    assert final.status == "CANCELLED", final.error_message
    assert final.attempt == 2
    daemon.cluster.wait_job_state(high, ["COMPLETED"], JOB_DEADLINE)
    assert {a for a, _ in steps_done(run_dir)} == {1}  # attempt 2 never ran a step
    assert [a for _, a in daemon.jobs_by_attempt(run_id)].count(2) <= 1


@pytest.mark.parametrize("point", ["launch_claimed:2", "job_submitted:2", "retry_committed:1"])
def test_daemon_killed_between_attempts_submits_each_attempt_once(
    daemon: ClusterDaemon, point: str
) -> None:
    """SIGKILL between an attempt's end and the next submission (after the retry is committed,
    after attempt 2 is claimed), and between sbatch and recording the id: exactly one job per
    attempt; attempt 1's job (still listed by the cluster) is never taken for attempt 2."""
    daemon.stop()
    daemon.start(env={CRASH_POINT_VARIABLE: point})
    config = {"steps": 4, "step_seconds": 0.2, "checkpoint_every": 2}
    run_id = daemon.submit(config, template="selfckpt")
    daemon.wait_exit(2 * JOB_DEADLINE)
    daemon.start()
    final = daemon.wait_final(run_id, 2 * JOB_DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert final.attempt == 2
    assert [s for _, s in steps_done(_run_dir(daemon, run_id))] == [1, 2, 3, 4]
    _assert_one_job_per_attempt_never_two_at_once(daemon, run_id, 2)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_DEADLINE + 60)
def test_a_time_limit_shorter_than_the_run_resumes_until_complete(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """Slurm's minimum limit is a minute (checked every ~30 s): the warning is asked for 50 s
    before (it comes up to 30 s later here), the simulation saves and waits for the limit,
    and the next attempt resumes; each attempt recomputes at most the step it was in."""
    d = ClusterDaemon(tmp_path, slurm_cluster)
    d.write_config(
        ckpt_template(
            "limited",
            executor="cluster",
            timeout_seconds=60,
            max_attempts=8,
            retry_on=["timeout"],
            retry_delay_seconds=0,
            resume=True,
            checkpoint_signal="USR1",
            checkpoint_seconds=50,
        )
    )
    d.start()
    try:
        run_id = d.submit({"steps": STEPS, "step_seconds": 5.0}, template="limited")
        final = d.wait_final(run_id, SLOW_DEADLINE)
        assert final.status == "COMPLETED", final.error_message
        assert final.attempt is not None and final.attempt >= 2
        run_dir = _run_dir(d, run_id)
        assert sorted({s for _, s in steps_done(run_dir)}) == list(range(1, STEPS + 1))
        assert sum(recomputed(run_dir).values()) == 0  # the lost step was never finished
        warned = {a for a, name, _ in signals_seen(run_dir) if name == "SIGUSR1"}
        assert warned == set(range(1, final.attempt))  # every attempt but the last
        reasons = [e.reason or "" for e in d.store.events(run_id)]
        assert sum("ended timeout" in r for r in reasons) == final.attempt - 1, reasons
        _assert_one_job_per_attempt_never_two_at_once(d, run_id, final.attempt)
    finally:
        d.close()


def test_a_job_requeued_by_an_administrator_is_not_over_while_it_lives(
    daemon: ClusterDaemon,
) -> None:
    """--no-requeue makes `scontrol requeue` refuse; an administrator who overrides it puts the
    job back in the queue: the run stays RUNNING on that job until it really ends."""
    launches = daemon.tmp / "launches"
    config = {"launches_file": str(launches), "per_launch": [{"sleep": 300}, {"sleep": 1}]}
    run_id = daemon.submit(config, "cl")
    running = daemon.wait_running(run_id)
    job = running.external_id or ""
    refused = daemon.cluster.run("scontrol", "requeue", job, check=False)
    assert refused.returncode != 0  # --no-requeue: one job is one attempt
    daemon.cluster.run("scontrol", "update", f"jobid={job}", "Requeue=1")
    daemon.cluster.run("scontrol", "requeue", job)
    wait_for(
        "the job back in the queue",
        lambda: daemon.cluster.job_state(job) == "PENDING",
        JOB_DEADLINE,
    )
    assert daemon.run(run_id).status == "RUNNING"
    # It starts again after the cluster's cred_expire (10 s here, 120 s by default).
    final = daemon.wait_final(run_id, 2 * JOB_DEADLINE)
    assert (final.status, final.exit_code, final.external_id) == ("COMPLETED", 0, job)
    assert len(launches.read_text().splitlines()) == 2  # it ran twice, as one job
    statuses = [e.to_status for e in daemon.store.events(run_id)]
    assert statuses == ["PENDING", "RUNNING", "COMPLETED"], statuses  # submitted, started, ended
