"""The Slurm executor's pure pieces: the batch script and a job's end read as an ExitStatus."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from supervisor.executors.slurm.jobs import (
    batch_script,
    cluster_status,
    exit_status_of,
    job_env,
    job_started,
    job_variables,
)
from supervisor.executors.slurm.parsing import JobInfo, JobState, purged_job

GIB = 1024**3


def _info(state: JobState, code: int | None = None, sig: int | None = None) -> JobInfo:
    return JobInfo("7", state, exit_code=code, exit_signal=sig, source="squeue")


def _keep(record_dir: Path, text: str) -> Path:
    record_dir.mkdir(exist_ok=True)
    (record_dir / "exit").write_text(text)
    return record_dir


def test_the_keepers_exit_file_is_the_true_status(tmp_path: Path) -> None:
    kept = _keep(tmp_path / "r", "3\n")
    status = exit_status_of(_info(JobState.FAILED, 0), kept)
    assert (status.exit_code, status.exit_signal, status.verdict) == (3, None, None)


def test_without_the_file_the_clusters_record_counts(tmp_path: Path) -> None:
    assert exit_status_of(_info(JobState.FAILED, 4), tmp_path).exit_code == 4
    # The keeper exits with the simulation's $?: 139 is a death by SIGSEGV.
    assert exit_status_of(_info(JobState.FAILED, 139), tmp_path).exit_signal == signal.SIGSEGV
    assert exit_status_of(_info(JobState.CANCELLED, None, 9), tmp_path).exit_signal == 9


def test_cancelled_while_queued_is_not_a_success() -> None:
    status = cluster_status(_info(JobState.CANCELLED, 0))
    assert (status.exit_code, status.exit_signal) == (None, signal.SIGTERM)


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        (JobState.TIMEOUT, "timeout"),
        (JobState.NODE_FAIL, "node_failure"),
        (JobState.PREEMPTED, "preempted"),  # issue 21: never a plain failure
    ],
)
def test_cluster_verdicts(tmp_path: Path, state: JobState, verdict: str) -> None:
    kept = _keep(tmp_path / "r", "143\n")
    status = exit_status_of(_info(state, 0, 15), kept)
    assert status.verdict == verdict
    assert status.exit_signal == signal.SIGTERM


def test_out_of_memory_carries_the_peak(tmp_path: Path) -> None:
    info = JobInfo("7", JobState.OUT_OF_MEMORY, exit_signal=9, max_rss_bytes=GIB, source="sacct")
    status = exit_status_of(info, tmp_path)
    assert status.out_of_memory
    assert status.peak_memory_bytes == GIB


def test_a_job_nobody_knows_vanished_unless_its_keeper_wrote(tmp_path: Path) -> None:
    gone = exit_status_of(purged_job("7"), tmp_path)
    assert (gone.verdict, gone.known) == ("vanished", False)
    kept = exit_status_of(purged_job("7"), _keep(tmp_path / "r", "0\n"))
    assert (kept.exit_code, kept.verdict) == (0, None)


def test_started_means_running_or_over() -> None:
    assert not job_started(_info(JobState.PENDING))
    assert job_started(_info(JobState.RUNNING))
    assert job_started(_info(JobState.COMPLETED, 0))
    assert job_started(purged_job("7"))


def test_job_env_drops_what_steers_slurm() -> None:
    env = job_env({"PATH": "/bin", "SLURM_JOB_ID": "3", "SLURM_CONF": "/c", "SBATCH_X": "1"})
    assert env == {"PATH": "/bin", "SLURM_CONF": "/c"}


def test_batch_script_runs_the_argv_and_keeps_its_status(tmp_path: Path) -> None:
    record = tmp_path / "rec dir"
    record.mkdir()
    script = batch_script("abc", record, ["/bin/sh", "-c", 'echo "$1"; exit 5', "x", "it's"])
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 5
    assert result.stdout == "it's\n"
    assert (record / "exit").read_text() == "5\n"


def test_the_script_sets_the_runs_environment(tmp_path: Path) -> None:
    env, unset = job_variables(
        {"PATH": "/bin:/usr/bin", "A": "x y 'z'", "SLURM_JOB_ID": "1"},
        {"PATH": "/other", "NOTIFY_SOCKET": "/run/n", "SLURM_CONF": "/c"},
        gpus=None,
    )
    assert env == {"PATH": "/bin:/usr/bin", "A": "x y 'z'"}
    assert unset == ["NOTIFY_SOCKET"]  # the daemon's, not the run's; Slurm's own stay
    script = batch_script(
        "abc", tmp_path, ["/bin/sh", "-c", 'echo "$A|${NOTIFY_SOCKET-unset}"'], env, unset
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"NOTIFY_SOCKET": "/run/n", "PATH": "/other"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == "x y 'z'|unset\n"


def test_a_job_given_gpus_keeps_slurms_gpu_variables() -> None:
    env, unset = job_variables({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0"}, 2)
    assert (env, unset) == ({}, [])


def test_a_bad_variable_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a variable name"):
        batch_script("abc", tmp_path, ["true"], {"A-B": "1"})


# A simulation that notes the warning signal, then exits 3 once told to stop: what it wrote
# shows which signals reached it and whether SIGINT was left at its default.
_WARNED_SIM = r"""
trap 'echo warned >>"$1/seen"' USR1
grep SigIgn /proc/$$/status >"$1/sigign"
: >"$1/ready"
i=0
while [ ! -e "$1/stop" ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done
exit 3
"""


def _wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_the_checkpoint_script_forwards_the_warning_to_the_simulation(tmp_path: Path) -> None:
    """Slurm's --signal=B:USR1 reaches the batch shell alone: the script passes it on to the
    simulation's group, goes on waiting, and keeps the simulation's own status (issue 21)."""
    record = tmp_path / "rec"
    record.mkdir()
    (record / "exit").write_text("143\n")  # a requeued job's earlier run: never read as this
    argv = ["/bin/sh", "-c", _WARNED_SIM, "sim", str(tmp_path)]
    script = batch_script("abc", record, argv, checkpoint_signal="USR1")
    assert script.startswith("#!/bin/bash -p\n")
    shell = subprocess.Popen(["/bin/bash", "-p", "-c", script], start_new_session=True)
    try:
        _wait_file(tmp_path / "ready")
        assert not (record / "exit").exists()
        shell.send_signal(signal.SIGUSR1)
        _wait_file(tmp_path / "seen")
        shell.send_signal(signal.SIGTERM)  # as Slurm's own TERM: the shell waits on
        (tmp_path / "stop").touch()
        assert shell.wait(10) == 3
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert (tmp_path / "seen").read_text() == "warned\n"
    assert (record / "exit").read_text() == "3\n"
    ignored = int((tmp_path / "sigign").read_text().split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), "SIGINT ignored in the simulation"


def test_a_bad_checkpoint_signal_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="signal"):
        batch_script("abc", tmp_path, ["true"], checkpoint_signal="USR1; rm -rf /")
