"""SlurmExecutor driven directly (as the loop drives it) against the real test cluster."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import pid_alive, wait_for
from slurm_cluster import SlurmCluster

from supervisor.executors.base import LaunchSpec, NeverStarted, Queued, RunRef, StillStarting
from supervisor.executors.slurm.commands import SlurmCommands
from supervisor.executors.slurm.executor import SlurmExecutor
from supervisor.executors.slurm.handles import SlurmLaunch, SlurmRunHandle
from supervisor.settings import ExecutorSettings

JOBS = 12
WAIT = 60.0
COMMAND_TIMEOUT = 3.0  # also how long a new executor waits before it looks for jobs by name


def _executor(cluster: SlurmCluster, runs: Path, interval: float) -> SlurmExecutor:
    config = ExecutorSettings(
        name="cluster",
        kind="slurm",
        runs_dir=runs,
        poll_interval_seconds=interval,
        command_timeout_seconds=COMMAND_TIMEOUT,
    )
    commands = SlurmCommands(env=dict(cluster.env), timeout=COMMAND_TIMEOUT)
    return SlurmExecutor("cluster", config, wake=threading.Event().set, commands=commands)


@pytest.fixture
def executor(tmp_path: Path, slurm_cluster: SlurmCluster) -> Iterator[SlurmExecutor]:
    """An executor on the test cluster, polling every second."""
    ex = _executor(slurm_cluster, tmp_path / "runs", 1.0)
    yield ex
    ex.close()


def _spec(runs: Path, run_id: str, argv: list[str]) -> LaunchSpec:
    run_dir = runs / run_id
    (run_dir / ".runsup").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    return LaunchSpec(
        run_id=run_id,
        argv=argv,
        cwd=run_dir,
        env={"PATH": "/usr/bin:/bin"},
        log_path=run_dir / "logs" / "sim.log",
        record_dir=run_dir / ".runsup",
    )


def test_one_query_watches_every_job(executor: SlurmExecutor, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    launches = {
        f"{i:012x}": executor.begin_launch(_spec(runs, f"{i:012x}", ["sleep", "2"]))
        for i in range(JOBS)
    }
    handles: dict[str, SlurmRunHandle] = {}

    def all_ended() -> bool:
        for run_id in executor.poll():
            launch = launches.get(run_id)
            if launch is not None and run_id not in handles:
                handle = launch.poll()
                if handle is not None:
                    handles[run_id] = handle
        return len(handles) == JOBS and all(h.exit_status() for h in handles.values())

    try:
        wait_for("every job to run and end", all_ended, WAIT)
    finally:
        for handle in handles.values():
            handle.release()
    assert {h.exit_status().exit_code for h in handles.values()} == {0}  # type: ignore[union-attr]
    assert all(h.record.host and h.record.external_id for h in handles.values())
    # One squeue call per query, whatever the number of jobs; one query asked about them all.
    assert executor.commands.calls["squeue"] == executor.queries
    assert executor.largest_query == JOBS
    assert executor.commands.calls["sbatch"] == JOBS
    # A job over: its stand-in is gone (the executor ends it as soon as the cluster says so).
    wait_for(
        "every stand-in gone", lambda: not any(pid_alive(h.record.pid) for h in handles.values())
    )


def test_a_claim_without_a_job_id_is_found_by_name(
    executor: SlurmExecutor, tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    runs = tmp_path / "runs"
    launch = executor.begin_launch(_spec(runs, "0000000000aa", ["sleep", "30"]))
    assert isinstance(launch, SlurmLaunch)

    def job_id() -> str | None:
        launch.poll()
        return launch.external_id

    submitted = wait_for("sbatch to answer", job_id, WAIT)
    launch.abandon()  # as a daemon that died before recording the id
    again = _executor(slurm_cluster, runs, 1.0)
    try:
        ref = RunRef("0000000000aa", runs / "0000000000aa" / ".runsup", None, claimed=True)
        assert isinstance(again.recover(ref), StillStarting)  # looking it up by name
        found = wait_for("the job found by name", lambda: _settled(again, ref), WAIT)
        assert isinstance(found, Queued)
        assert found.launch.external_id == submitted
        other = RunRef("0000000000bb", runs / "0000000000bb" / ".runsup", None, claimed=True)
        assert isinstance(again.recover(other), StillStarting)
        assert isinstance(wait_for("no job", lambda: _settled(again, other), WAIT), NeverStarted)
    finally:
        again.close()


def _settled(executor: SlurmExecutor, ref: RunRef) -> object | None:
    found = executor.recover(ref)
    return None if isinstance(found, StillStarting) else found
