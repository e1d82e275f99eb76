"""Pure pieces of the Slurm executor: the batch script, and a job's end read as an ExitStatus.

The batch script runs the simulation under a tiny sh keeper inside the job, which writes the
simulation's `$?` to `<record_dir>/exit` in the shared run directory: the true status, also
when no daemon watched the job end. The cluster's record (squeue / sacct) covers what the
keeper cannot see (a job cancelled while queued, killed at its time limit, out of memory, or
on a node that failed), and a job nobody knows any more is "vanished".
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from supervisor.executors.base import ExitStatus
from supervisor.executors.local.keeper import EXIT_FILE, decode_shell_status, read_exit_file
from supervisor.executors.slurm.commands import client_env
from supervisor.executors.slurm.parsing import JobInfo, JobState

_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_SIGNAL_NAME = re.compile(r"\A[A-Z][A-Z0-9+]*\Z")
SLURM_PREFIX = "SLURM_"
# Set by Slurm in a job given GPUs: the run's own values would point at other GPUs.
GPU_VARIABLES = frozenset({"CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES"})
# Job states in which the job has started (a launch becomes a running run).
STARTED_STATES = frozenset({JobState.RUNNING, JobState.SUSPENDED, JobState.COMPLETING})
NODE_FAILURE_STATES = frozenset({JobState.NODE_FAIL, JobState.BOOT_FAIL})
# The cluster's verdicts (ExitStatus.verdict) on how it ended a job.
VERDICT_TIMEOUT = "timeout"
VERDICT_NODE_FAILURE = "node_failure"
VERDICT_PREEMPTED = "preempted"
VERDICT_VANISHED = "vanished"

# The keeper inside the job. `trap :` keeps the shell alive through the TERM that `scancel
# --full` and Slurm's time limit send to every process of the job, so it can write the
# simulation's status once it ends (a trap with `:` is reset to default in the simulation,
# an ignored signal would stay ignored). The simulation runs in the foreground: sh defers the
# trap until it ends, then `$?` is still its status. SIGKILL (after KillWait) takes the keeper
# too: then the cluster's record has the status.
BATCH_SCRIPT = """#!/bin/sh
# run-supervisor: run {run_id}
{environment}trap : TERM INT HUP
_runsup_d={record_dir}
rm -f "$_runsup_d/{exit_file}"
{command}
_runsup_rc=$?
printf '%s\\n' "$_runsup_rc" >"$_runsup_d/{exit_file}"
exit "$_runsup_rc"
"""


# The keeper when the job warns the simulation (sbatch --signal=B:SIG@secs, also sent at a
# preemption): Slurm sends SIG to the batch shell alone, and a POSIX sh defers a trap while a
# foreground command runs, so the simulation runs in the background and the shell waits for
# it, forwarding SIG to the simulation's process group. bash, because only with job control
# (`set -m`, which dash refuses without a terminal) does a background job start with SIGINT
# and SIGQUIT at their defaults and a group of its own; `-p` keeps BASH_ENV from being read.
# fd 2 of the shell itself goes to /dev/null (its job notices), the simulation's to the log.
# TERM, INT and HUP reach every process of the job from Slurm itself: the trap only notes
# that `wait` was interrupted, and the loop waits again until the simulation has ended. A
# `wait` for a child already reaped answers 127: the status before it stands.
CHECKPOINT_BATCH_SCRIPT = """#!/bin/bash -p
# run-supervisor: run {run_id}
{environment}_runsup_d={record_dir}
rm -f "$_runsup_d/{exit_file}"
_runsup_p=
_runsup_s=
trap '_runsup_s=1' TERM INT HUP
trap '_runsup_s=1; [ -z "$_runsup_p" ] || kill -{signal} -- "-$_runsup_p" 2>/dev/null' {signal}
set -m
exec 3>&2 2>/dev/null
{command} 2>&3 3>&- &
_runsup_p=$!
_runsup_rc=
while :; do
  _runsup_s=
  wait "$_runsup_p"
  _runsup_w=$?
  if [ "$_runsup_w" = 127 ] && [ -n "$_runsup_rc" ]; then break; fi
  _runsup_rc=$_runsup_w
  [ -n "$_runsup_s" ] || break
done
printf '%s\\n' "$_runsup_rc" >"$_runsup_d/{exit_file}"
exit "$_runsup_rc"
"""


def batch_script(
    run_id: str,
    record_dir: Path,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    unset: Collection[str] = (),
    *,
    checkpoint_signal: str | None = None,
) -> str:
    """The job's script: the run's environment, then the simulation's argv under the keeper.

    The environment is set in the script rather than with `sbatch --export=NAMES`: an export
    without ALL makes Slurm load the user's login environment on the node first (the implied
    --get-user-env), which costs about 2 s a job. The job starts from sbatch's environment
    (the daemon's); `unset` names what of it the run must not see.
    """
    lines = [f"unset -v {' '.join(sorted(unset))}\n"] if unset else []
    for name, value in sorted((env or {}).items()):
        if not _ENV_NAME.match(name):
            raise ValueError(f"not a variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    if checkpoint_signal is not None and not _SIGNAL_NAME.match(checkpoint_signal):
        raise ValueError(f"not a signal name: {checkpoint_signal!r}")
    template = BATCH_SCRIPT if checkpoint_signal is None else CHECKPOINT_BATCH_SCRIPT
    return template.format(
        signal=checkpoint_signal or "",
        run_id=run_id,
        environment="".join(lines),
        record_dir=shlex.quote(str(record_dir)),
        command=" ".join(shlex.quote(arg) for arg in argv),
        exit_file=EXIT_FILE,
    )


def job_variables(
    run_env: Mapping[str, str], submit_env: Mapping[str, str], gpus: int | None
) -> tuple[dict[str, str], list[str]]:
    """What the script sets and what it unsets so that the job sees the run's environment:
    Slurm's own variables are left alone, and so are the GPU ones when the job asks for GPUs
    (Slurm sets them to the GPUs it gave the job)."""
    exported = {k: v for k, v in job_env(run_env).items() if not _slurm_sets(k, gpus)}
    unset = [
        k
        for k in submit_env
        if k not in exported and not _slurm_sets(k, gpus) and _ENV_NAME.match(k)
    ]
    return exported, unset


def _slurm_sets(name: str, gpus: int | None) -> bool:
    return name.startswith(SLURM_PREFIX) or (bool(gpus) and name in GPU_VARIABLES)


def job_env(env: Mapping[str, str]) -> dict[str, str]:
    """The run's environment without what would steer Slurm inside the job (a daemon started
    from a job passes its own SLURM_JOB_ID otherwise)."""
    return client_env(env)


def job_started(info: JobInfo) -> bool:
    """True once the job has started or ended (a launch then becomes a run)."""
    return info.state in STARTED_STATES or info.final or info.purged


def job_over(info: JobInfo) -> bool:
    """True once the cluster says the job has ended for good, or knows it no more."""
    return info.final or info.purged


def cluster_status(info: JobInfo) -> ExitStatus:
    """The batch script's end as the cluster recorded it (the keeper exits with the
    simulation's `$?`, so 128+N is a death by signal N)."""
    if info.exit_signal is not None:
        return ExitStatus(None, info.exit_signal)
    if info.state is JobState.CANCELLED and not info.exit_code:
        # Cancelled before the script could end by itself (queued, or killed by scancel).
        return ExitStatus(None, signal.SIGTERM)
    if info.exit_code is not None:
        return decode_shell_status(info.exit_code)
    return ExitStatus(None, None)


def exit_status_of(info: JobInfo, record_dir: Path) -> ExitStatus:
    """A finished job's status: the keeper's exit file first, the cluster's record for the
    rest, with the cluster's own verdict (time limit, out of memory, node failure)."""
    kept = read_exit_file(record_dir)
    if info.purged:
        return kept or ExitStatus(None, None, verdict=VERDICT_VANISHED)
    status = replace(kept or cluster_status(info), peak_memory_bytes=info.max_rss_bytes)
    if info.state is JobState.TIMEOUT:
        return replace(status, verdict=VERDICT_TIMEOUT)
    if info.state is JobState.OUT_OF_MEMORY:
        return replace(status, out_of_memory=True)
    if info.state in NODE_FAILURE_STATES:
        return replace(status, verdict=VERDICT_NODE_FAILURE)
    if info.state is JobState.PREEMPTED:
        # The cluster took the job's node for another (SPEC section 9): whatever the
        # simulation did in its grace time, the attempt ended `preempted`.
        return replace(status, verdict=VERDICT_PREEMPTED)
    return status
