"""SlurmExecutor driven directly (as the loop drives it) against the real test cluster."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import group_alive, pid_alive, wait_for
from slurm_cluster import SlurmCluster
from slurm_jobs import final, log_text, request, wait_state

from supervisor.executors.base import (
    Adopted,
    LaunchSpec,
    NeverStarted,
    Queued,
    RunRef,
    StillStarting,
)
from supervisor.executors.slurm.commands import SlurmCommands
from supervisor.executors.slurm.executor import SlurmExecutor
from supervisor.executors.slurm.handles import SlurmLaunch, SlurmRunHandle
from supervisor.executors.slurm.standin import (
    ENDED_FILE,
    STANDIN_FILE,
    StandInState,
    end_standin,
    find_standin,
    reap_watcher,
    standin_state,
    start_standin,
)
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


def _record_dir(runs: Path, run_id: str) -> Path:
    record = runs / run_id / ".runsup"
    record.mkdir(parents=True)
    return record


def _running_job(cluster: SlurmCluster, tmp_path: Path, name: str) -> str:
    commands = SlurmCommands(env=dict(cluster.env))
    req = request(tmp_path, name, "echo started; sleep 300")
    job_id = commands.submit(req)
    wait_for("the script to start", lambda: "started" in log_text(req), WAIT)
    return job_id


def test_a_job_over_when_first_seen_gets_no_stand_in(
    executor: SlurmExecutor, tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """A claim whose job ended while no daemon looked: its handle names a group that is gone,
    and no stand-in is started (one would wait for an `ended` that a killed daemon never
    writes)."""
    commands = SlurmCommands(env=dict(slurm_cluster.env))
    job_id = commands.submit(request(tmp_path, "over", "exit 3"))
    wait_state(commands, job_id, final)
    record = _record_dir(tmp_path / "runs", "0000000000c1")
    found = executor.recover(RunRef("0000000000c1", record, None, True, job_id))
    assert isinstance(found, Queued)
    launch = found.launch

    def handle() -> SlurmRunHandle | None:
        executor.poll()
        got = launch.poll()
        return got if isinstance(got, SlurmRunHandle) else None

    ended = wait_for("the launch's handle", handle, WAIT)
    status = ended.exit_status()
    assert status is not None and status.exit_code == 3
    assert not (record / STANDIN_FILE).exists(), "a stand-in was started for an ended job"
    assert not pid_alive(ended.record.pid) and not group_alive(ended.record.pgid)
    ended.release()


def test_the_stand_in_is_told_to_go_before_the_job_reads_as_over(
    executor: SlurmExecutor, tmp_path: Path
) -> None:
    """The loop commits the final status once the handle says the job is over: by then the
    stand-in has its `ended` (a daemon killed after the commit leaves none behind)."""
    run_id = "0000000000c2"
    launch = executor.begin_launch(_spec(tmp_path / "runs", run_id, ["sleep", "1"]))
    record = tmp_path / "runs" / run_id / ".runsup"
    seen: dict[str, object] = {}

    def over() -> bool:
        executor.poll()
        handle = seen.get("handle") or launch.poll()
        if handle is None:
            return False
        assert isinstance(handle, SlurmRunHandle)
        seen["handle"] = handle
        if handle.exit_status() is None:
            return False
        seen["ended_then"] = (record / ENDED_FILE).exists()
        return True

    wait_for("the job to run and end", over, WAIT)
    handle = seen["handle"]
    assert isinstance(handle, SlurmRunHandle)
    assert seen["ended_then"], "the job read as over before its stand-in was told to go"
    wait_for("the stand-in gone", lambda: not group_alive(handle.record.pgid))
    handle.release()


def test_a_new_executor_ends_the_stand_ins_of_runs_it_does_not_hold(
    executor: SlurmExecutor, tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """A daemon killed after committing a run's final status, before ending its stand-in:
    the next daemon does not take that run on again (its row is final), so its executor ends
    every stand-in of its own that no recovered run holds, at its first poll."""
    runs = tmp_path / "runs"
    left_record, held_record = _record_dir(runs, "0000000000c3"), _record_dir(runs, "0000000000c4")
    left_job = _running_job(slurm_cluster, tmp_path, "left")
    held_job = _running_job(slurm_cluster, tmp_path, "held")
    env = dict(slurm_cluster.env)
    left = start_standin(left_job, left_record, env, executor="cluster")
    held = start_standin(held_job, held_record, env, executor="cluster")
    other = start_standin(held_job, _record_dir(runs, "0000000000c5"), env, executor="whole")
    adopted = executor.recover(RunRef("0000000000c4", held_record, None, False, held_job))
    assert isinstance(adopted, Adopted)
    try:
        executor.poll()  # the first poll: the sweep
        wait_for("the left-over stand-in to end", lambda: not group_alive(left.pgid), WAIT)
        assert standin_state(left) is StandInState.ENDED
        # The same sweep passed over the held one and another executor's.
        assert standin_state(held) is StandInState.ALIVE
        assert standin_state(other) is StandInState.ALIVE
    finally:
        adopted.handle.release()
        for standin in (left, held, other):
            found = find_standin(standin.job_id, standin.record_dir)
            if found is not None:
                end_standin(found)
            assert standin.watcher_pid is not None
            reap_watcher(standin.watcher_pid, block=True)
    assert os.path.exists(held_record / ENDED_FILE)
