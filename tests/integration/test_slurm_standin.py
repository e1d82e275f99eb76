"""The local stand-in group of a running Slurm job, against a real cluster: signals to the
group reach the job, a SIGKILL of the group cancels it, and a restarted daemon finds it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import wait_for
from slurm_cluster import SlurmCluster, free_ports
from slurm_jobs import final, log_text, request, wait_state

from supervisor.executors.slurm.commands import SlurmCommands
from supervisor.executors.slurm.parsing import JobState, SubmitRequest
from supervisor.executors.slurm.standin import (
    ENDED_FILE,
    StandIn,
    StandInState,
    end_standin,
    find_standin,
    forwarded_signals,
    reap_watcher,
    standin_state,
    start_standin,
    was_killed,
)

# A job id the test cluster has never given out (its ids start at 1 and count up).
UNKNOWN_JOB_ID = "987654321"

# A job that reports each signal it catches and ends with 42 on SIGTERM.
TRAPPING_JOB = """trap 'echo got HUP' HUP
trap 'echo got INT' INT
trap 'echo got TERM; exit 42' TERM
echo started
while :; do sleep 0.2; done"""


def group_alive(pgid: int) -> bool:
    """killpg(pgid, 0) succeeds: what a GUI checks."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def running_job(
    commands: SlurmCommands, tmp_path: Path, run_id: str, body: str
) -> tuple[str, SubmitRequest]:
    """Submit `body` and wait until the script itself runs (RUNNING comes a little earlier)."""
    req = request(tmp_path, run_id, body)
    job_id = commands.submit(req)
    wait_for("the script to start", lambda: "started" in log_text(req))
    return job_id, req


@pytest.fixture
def commands(slurm_cluster: SlurmCluster) -> SlurmCommands:
    """The command layer on the cluster without accounting."""
    return SlurmCommands(env=dict(slurm_cluster.env))


StartStandIn = Callable[..., StandIn]


@pytest.fixture
def standins() -> Iterator[StartStandIn]:
    """start_standin, with every stand-in it started ended at teardown (also when the test
    failed half way): told to go, then its group and its watcher killed if still there."""
    started: list[StandIn] = []

    def start(*args: object, **kwargs: object) -> StandIn:
        standin = start_standin(*args, **kwargs)  # type: ignore[arg-type]
        started.append(standin)
        return standin

    yield start
    for standin in started:
        if not end_standin(standin, timeout=2.0):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(standin.pgid, signal.SIGKILL)
        if standin.watcher_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(standin.watcher_pid, signal.SIGKILL)  # the watcher leads its group
            reap_watcher(standin.watcher_pid, block=True)


def test_signals_to_the_group_reach_the_job(
    commands: SlurmCommands,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    standins: StartStandIn,
) -> None:
    job_id, req = running_job(commands, tmp_path, "standin1", TRAPPING_JOB)
    standin = standins(job_id, tmp_path / "standin1.rec", slurm_cluster.env)
    assert standin.pid == standin.pgid == os.getpgid(standin.pid)
    assert os.getsid(standin.pid) == standin.pid  # not in our session: our Ctrl-C misses it
    assert group_alive(standin.pgid) and standin_state(standin) is StandInState.ALIVE

    os.killpg(standin.pgid, signal.SIGHUP)
    wait_for("the job to get SIGHUP", lambda: "got HUP" in log_text(req))
    os.killpg(standin.pgid, signal.SIGINT)
    wait_for("the job to get SIGINT", lambda: "got INT" in log_text(req))
    assert commands.query([job_id])[job_id].state is JobState.RUNNING
    assert group_alive(standin.pgid)

    os.killpg(standin.pgid, signal.SIGTERM)
    info = wait_state(commands, job_id, final)
    assert (info.state, info.exit_code) == (JobState.FAILED, 42)
    assert "got TERM" in log_text(req)
    assert forwarded_signals(standin.record_dir) == ["HUP", "INT", "TERM"]
    assert group_alive(standin.pgid)  # until the daemon sees the job ended

    assert end_standin(standin)
    assert not group_alive(standin.pgid)
    assert standin_state(standin) is StandInState.ENDED and not was_killed(standin)
    assert _no_process_left(standin)


def test_sigkill_of_the_group_cancels_the_job(
    commands: SlurmCommands,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    standins: StartStandIn,
) -> None:
    job_id, _ = running_job(commands, tmp_path, "standin2", "echo started; sleep 300")
    standin = standins(job_id, tmp_path / "standin2.rec", slurm_cluster.env)
    os.killpg(standin.pgid, signal.SIGKILL)
    info = wait_state(commands, job_id, final)
    assert info.state is JobState.CANCELLED
    wait_for("the watcher to record the kill", lambda: was_killed(standin))
    assert standin_state(standin) is StandInState.KILLED
    assert forwarded_signals(standin.record_dir) == []
    assert _no_process_left(standin)


def test_a_restarted_daemon_finds_the_standin(
    commands: SlurmCommands,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    standins: StartStandIn,
) -> None:
    job_id, req = running_job(commands, tmp_path, "standin3", TRAPPING_JOB)
    record = tmp_path / "standin3.rec"
    first = standins(job_id, record, slurm_cluster.env)
    found = find_standin(job_id, record)
    assert found is not None
    assert found.leader == first.leader and found.watcher_pid is None
    assert standin_state(found) is StandInState.ALIVE

    os.killpg(found.pgid, signal.SIGHUP)
    wait_for("the job to get SIGHUP", lambda: "got HUP" in log_text(req))
    commands.cancel(job_id)
    wait_state(commands, job_id, final)
    assert end_standin(found)
    assert standin_state(found) is StandInState.ENDED
    assert _no_process_left(first)


def _no_process_left(standin: StandIn) -> bool:
    """The leader, its sleep and the watcher have all exited (the watcher reaped by us)."""
    if standin_state(standin) is StandInState.ALIVE:
        return False
    try:
        os.killpg(standin.pgid, 0)
    except ProcessLookupError:
        pass
    else:
        return False
    if standin.watcher_pid is None:
        return True
    wait_for("the watcher to exit", lambda: _reaped(standin.watcher_pid or 0))
    return True


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def test_a_standin_whose_job_no_cluster_knows_ends_by_itself(
    slurm_cluster: SlurmCluster, tmp_path: Path, standins: StartStandIn
) -> None:
    """A daemon gone for good leaves its stand-ins: once the cluster no longer knows the job
    (purged, or never there), the stand-in's own checker ends it."""
    standin = standins(UNKNOWN_JOB_ID, tmp_path / "gone.rec", slurm_cluster.env, check_seconds=1)
    wait_for("the stand-in to end by itself", lambda: not group_alive(standin.pgid))
    assert standin_state(standin) is StandInState.ENDED and not was_killed(standin)
    why = (standin.record_dir / ENDED_FILE).read_text()
    assert f"no cluster knows job {UNKNOWN_JOB_ID}" in why
    assert _no_process_left(standin)


def test_a_standin_whose_controller_stays_unreachable_ends_by_itself(
    slurm_cluster: SlurmCluster, tmp_path: Path, standins: StartStandIn
) -> None:
    """A cluster that went away (here: a configuration naming a controller nobody runs) is
    given `unreachable_seconds`, then the stand-in gives its job up for gone."""
    conf = tmp_path / "gone-slurm.conf"
    port = slurm_cluster.ports["slurmctld"]
    text = slurm_cluster.conf.read_text()
    assert f"SlurmctldPort={port}\n" in text
    # A short MessageTimeout: each failed squeue then takes 2 s, not 18.
    text = text.replace(f"SlurmctldPort={port}\n", f"SlurmctldPort={free_ports(1)[0]}\n")
    conf.write_text(f"{text}\nMessageTimeout=2\n")
    env = {**slurm_cluster.env, "SLURM_CONF": str(conf)}
    standin = standins(
        UNKNOWN_JOB_ID, tmp_path / "away.rec", env, check_seconds=1, unreachable_seconds=2
    )
    wait_for("the stand-in to give up", lambda: not group_alive(standin.pgid))
    why = (standin.record_dir / ENDED_FILE).read_text()
    assert "the controller did not answer for" in why, why
    assert _no_process_left(standin)
