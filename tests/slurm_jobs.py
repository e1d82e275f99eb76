"""Helpers for tests that run jobs on the test Slurm cluster: requests, waits, logs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon_harness import wait_for

from supervisor.executors.slurm.commands import SlurmCommands
from supervisor.executors.slurm.parsing import JobInfo, SubmitRequest

WAIT_SECONDS = 30.0  # a job starting or ending on the idle test cluster


def wait_state(
    commands: SlurmCommands,
    job_id: str,
    done: Callable[[JobInfo], bool],
    timeout: float = WAIT_SECONDS,
) -> JobInfo:
    """Query the job until `done` holds for it; return that record."""
    seen: list[JobInfo] = []

    def check() -> JobInfo | None:
        seen.append(commands.query([job_id])[job_id])
        return seen[-1] if done(seen[-1]) else None

    try:
        return wait_for(f"job {job_id}", check, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last seen: {seen[-1:]})") from None


def final(info: JobInfo) -> bool:
    """The job has ended."""
    return info.final


def request(tmp_path: Path, run_id: str, body: str, **kwargs: Any) -> SubmitRequest:
    """A request for a /bin/sh batch script in a fresh run directory."""
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    script = f"#!/bin/sh\n{body}\n"
    return SubmitRequest(run_id=run_id, run_dir=run_dir, script=script, **kwargs)


def log_text(req: SubmitRequest) -> str:
    """What the job has written to its log so far."""
    try:
        return req.output_path.read_text()
    except FileNotFoundError:
        return ""
