"""The Slurm command layer against a real single-node cluster, with and without accounting."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_harness import wait_for
from slurm_cluster import MIN_JOB_AGE_SECONDS, WHOLE_PARTITION, SlurmCluster
from slurm_jobs import final, log_text, request, wait_state

from supervisor.executors.slurm.commands import (
    SlurmCommands,
    SlurmError,
    SlurmTimeout,
    SubmitRejected,
)
from supervisor.executors.slurm.parsing import JobState, job_name

# A finished job's record leaves slurmctld some seconds after MinJobAge (the purge runs
# periodically): measured ~16 s for MinJobAge=10.
PURGE_WAIT_SECONDS = MIN_JOB_AGE_SECONDS + 40.0
TIME_LIMIT_WAIT_SECONDS = 150.0  # a 1-minute limit: Slurm checks limits every ~30 s
MANY_JOBS = 20


def test_submit_runs_in_the_run_dir_with_its_env_and_completes(
    slurm_commands: SlurmCommands, tmp_path: Path
) -> None:
    req = request(
        tmp_path,
        "complete",
        'echo "dir=$(pwd) foo=$FOO"',
        env={"FOO": "a,b c"},
        cpus=1,
        memory_bytes=64 * 1024**2,
        timeout_seconds=600,
    )
    job_id = slurm_commands.submit(req)
    assert job_id.isdigit()
    info = wait_state(slurm_commands, job_id, final)
    assert (info.state, info.exit_code, info.exit_signal) == (JobState.COMPLETED, 0, None)
    assert info.name == job_name("complete") and info.node
    assert f"dir={req.run_dir} foo=a,b c" in log_text(req)


def test_exit_code_n(slurm_commands: SlurmCommands, tmp_path: Path) -> None:
    job_id = slurm_commands.submit(request(tmp_path, "exit7", "echo bye; exit 7"))
    info = wait_state(slurm_commands, job_id, final)
    assert (info.state, info.exit_code, info.exit_signal) == (JobState.FAILED, 7, None)
    assert info.reason == "NonZeroExitCode"


def test_crash_signal(slurm_commands: SlurmCommands, tmp_path: Path) -> None:
    job_id = slurm_commands.submit(request(tmp_path, "segv", "kill -SEGV $$"))
    info = wait_state(slurm_commands, job_id, final)
    assert (info.state, info.exit_code, info.exit_signal) == (JobState.FAILED, None, 11)


def test_memory_cap_kills_the_job(slurm_commands: SlurmCommands, tmp_path: Path) -> None:
    body = "python3 -c 'import time; x = bytearray(400 << 20); time.sleep(30)'"
    req = request(tmp_path, "oom", body, memory_bytes=100 << 20)
    info = wait_state(slurm_commands, slurm_commands.submit(req), final)
    # Without task/cgroup Slurm kills by sampling: FAILED by SIGKILL, not OUT_OF_MEMORY.
    assert (info.state, info.exit_signal) == (JobState.FAILED, signal.SIGKILL)
    assert "exceeded memory limit" in log_text(req)


def test_submit_creates_the_log_directory(slurm_commands: SlurmCommands, tmp_path: Path) -> None:
    req = request(tmp_path, "nologs", "echo here", log_path=tmp_path / "nologs" / "new" / "x.log")
    info = wait_state(slurm_commands, slurm_commands.submit(req), final)
    assert info.state is JobState.COMPLETED
    assert "here" in log_text(req)


def test_refused_submission_is_final_and_leaves_no_job(
    slurm_commands: SlurmCommands, tmp_path: Path
) -> None:
    req = request(tmp_path, "badpart", "true", partition="no-such-partition")
    with pytest.raises(SubmitRejected, match="Invalid partition name"):
        slurm_commands.submit(req)
    assert slurm_commands.find_by_name([job_name("badpart")]) == {}


def test_cancel_queued_job_removes_it(
    slurm_commands: SlurmCommands, any_slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    cpus = any_slurm_cluster.cpus
    whole = {"partition": WHOLE_PARTITION, "cpus": cpus}
    holder = slurm_commands.submit(request(tmp_path, "holder", "sleep 300", **whole))
    wait_state(slurm_commands, holder, lambda i: i.state is JobState.RUNNING)
    queued_req = request(tmp_path, "queued", "echo ran", **whole)
    queued = slurm_commands.submit(queued_req)
    info = wait_state(slurm_commands, queued, lambda i: i.reason in ("Resources", "Priority"))
    assert info.state is JobState.PENDING and info.node is None

    slurm_commands.cancel(queued)
    info = wait_state(slurm_commands, queued, final)
    assert info.state is JobState.CANCELLED
    assert log_text(queued_req) == ""  # it never ran


def test_cancel_running_term_ignoring_job_full_term_then_scancel(
    slurm_commands: SlurmCommands, tmp_path: Path
) -> None:
    body = "trap 'echo got TERM' TERM\necho started\nwhile :; do sleep 0.2; done"
    req = request(tmp_path, "stubborn", body)
    job_id = slurm_commands.submit(req)
    wait_for("the script to start", lambda: "started" in log_text(req))

    slurm_commands.cancel(job_id, signal.SIGTERM)  # --full: the batch script itself gets it
    wait_for("the script to see SIGTERM", lambda: "got TERM" in log_text(req))
    assert slurm_commands.query([job_id])[job_id].state is JobState.RUNNING

    slurm_commands.cancel(job_id)  # Slurm's own: TERM, then KILL after KillWait
    info = wait_state(slurm_commands, job_id, final)
    assert (info.state, info.exit_signal) == (JobState.CANCELLED, signal.SIGKILL)


def test_query_many_jobs_in_one_call(
    slurm_commands: SlurmCommands, any_slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    ids = [
        slurm_commands.submit(request(tmp_path, f"many{n}", f"exit {n}")) for n in range(MANY_JOBS)
    ]
    wait_for("every job to end", lambda: all(i.final for i in slurm_commands.query(ids).values()))
    slurm_commands.accounting()  # asked once per SlurmCommands, then remembered
    before = slurm_commands.calls.copy()
    never = "99999999"  # an id this cluster never gave out
    answer = slurm_commands.query([*ids, never, ids[0]])
    assert list(answer) == [*ids, never]
    assert [answer[job_id].exit_code for job_id in ids[1:]] == list(range(1, MANY_JOBS))
    assert answer[ids[0]].state is JobState.COMPLETED
    assert answer[never].purged and answer[never].state is JobState.UNKNOWN
    calls = slurm_commands.calls - before
    # One squeue for every id; sacct once for the id squeue does not list, if it works.
    expected = {"squeue": 1, "sacct": 1} if any_slurm_cluster.accounting else {"squeue": 1}
    assert dict(calls) == expected


def test_query_of_one_unknown_id_is_purged_not_an_error(slurm_commands: SlurmCommands) -> None:
    # squeue fails (rc 1, "Invalid job id specified") for a single unknown id.
    assert slurm_commands.query(["99999998"])["99999998"].purged
    assert slurm_commands.query([]) == {}


def test_finished_job_after_its_record_is_purged(
    slurm_commands: SlurmCommands, any_slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job_id = slurm_commands.submit(request(tmp_path, "purged", "exit 5"))
    wait_state(slurm_commands, job_id, final)
    wait_for(
        "slurmctld to purge the record",
        lambda: any_slurm_cluster.job_state(job_id) == "",
        PURGE_WAIT_SECONDS,
    )
    info = slurm_commands.query([job_id])[job_id]
    found = slurm_commands.find_by_name([job_name("purged")])
    if any_slurm_cluster.accounting:  # sacct remembers it
        assert (info.source, info.state, info.exit_code) == ("sacct", JobState.FAILED, 5)
        assert found == {job_name("purged"): job_id}
        # It ended MinJobAge before the purge: a search from a moment ago misses it.
        recent = datetime.now(UTC) - timedelta(seconds=2)
        assert slurm_commands.find_by_name([job_name("purged")], since=recent) == {}
    else:
        assert info.purged and info.state is JobState.UNKNOWN
        assert found == {}


def test_find_by_name(slurm_commands: SlurmCommands, tmp_path: Path) -> None:
    running = slurm_commands.submit(request(tmp_path, "named1", "sleep 300"))
    done = slurm_commands.submit(request(tmp_path, "named2", "true"))
    wait_state(slurm_commands, done, final)
    names = [job_name("named1"), job_name("named2"), job_name("never-submitted")]
    assert slurm_commands.find_by_name(names) == {names[0]: running, names[1]: done}
    assert slurm_commands.find_by_name([]) == {}


def test_accounting_detection(
    slurm_commands: SlurmCommands, any_slurm_cluster: SlurmCluster
) -> None:
    assert slurm_commands.accounting() is any_slurm_cluster.accounting


def test_controller_that_does_not_answer_is_a_timeout(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    conf = tmp_path / "slurm.conf"
    port = slurm_cluster.ports["slurmctld"]
    conf.write_text(
        slurm_cluster.conf.read_text().replace(f"SlurmctldPort={port}", "SlurmctldPort=1")
    )
    commands = SlurmCommands(env={**slurm_cluster.env, "SLURM_CONF": str(conf)}, timeout=2.0)
    with pytest.raises(SlurmTimeout, match="squeue did not answer within 2 s"):
        commands.query(["1", "2"])
    with pytest.raises(SlurmTimeout):
        commands.submit(request(tmp_path, "unanswered", "true"))
    assert commands.calls == {"squeue": 1, "sbatch": 1}


def test_a_stopped_controller_is_a_timeout_not_an_answer(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    commands = SlurmCommands(env=dict(slurm_cluster.env), timeout=1.0)
    job_id = commands.submit(request(tmp_path, "frozen", "sleep 300"))
    controller = slurm_cluster.processes["slurmctld"].pid
    os.kill(controller, signal.SIGSTOP)
    try:
        with pytest.raises(SlurmTimeout, match="squeue did not answer"):
            commands.query([job_id])
    finally:
        os.kill(controller, signal.SIGCONT)
    assert commands.query([job_id])[job_id].state in (JobState.PENDING, JobState.RUNNING)


def test_a_failing_client_is_an_error_with_its_message(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text("ClusterName=broken\nNoSuchKey=1\n")
    commands = SlurmCommands(env={**slurm_cluster.env, "SLURM_CONF": str(broken)})
    with pytest.raises(SlurmError, match=r"squeue failed \(rc 1\): .*NoSuchKey"):
        commands.query(["1"])
    with pytest.raises(SlurmError, match=r"scancel failed"):
        commands.cancel("1")


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_WAIT_SECONDS + 60)
def test_time_limit(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    commands = SlurmCommands(env=dict(slurm_cluster.env))
    req = request(tmp_path, "limit", "echo started; sleep 600", timeout_seconds=1)
    job_id = commands.submit(req)
    info = wait_state(commands, job_id, final, TIME_LIMIT_WAIT_SECONDS)
    assert (info.state, info.reason) == (JobState.TIMEOUT, "TimeLimit")
    assert "started" in log_text(req)


def test_accounting_gives_peak_memory(
    slurm_cluster_accounting: SlurmCluster, tmp_path: Path
) -> None:
    commands = SlurmCommands(env=dict(slurm_cluster_accounting.env))
    body = "python3 -c 'import time; x = bytearray(64 << 20); time.sleep(2)'"
    job_id = commands.submit(request(tmp_path, "rss", body, memory_bytes=512 << 20))
    info = wait_state(commands, job_id, lambda i: i.final and i.max_rss_bytes is not None)
    assert (info.state, info.source) == (JobState.COMPLETED, "squeue")  # squeue's, sacct's peak
    assert info.max_rss_bytes is not None and info.max_rss_bytes >= 64 << 20
