"""From a PENDING row to what an executor needs: checks, the run directory, command, environment.

Any program may write a PENDING row, so every row is checked as `runsup submit` checks its
input (the same functions), and a row that cannot run gets words a person can act on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from supervisor import rundir
from supervisor.daemon.resources import Held, run_env
from supervisor.db import RunRecord, check_config_json, is_valid_run_id
from supervisor.errors import ValidationError
from supervisor.executors.base import LaunchSpec
from supervisor.hints import unknown_template
from supervisor.notify import scrub_environment
from supervisor.queue.rules import attempt_number
from supervisor.settings import Template

# SPEC sections 11 and 15: what every attempt is told.
ATTEMPT_VARIABLE = "RUNSUP_ATTEMPT"
RESUME_VARIABLE = "RUNSUP_RESUME"


def id_problem(run_id: str) -> str | None:
    """Why a row's id cannot name a run directory (another program wrote it), or None."""
    if not is_valid_run_id(run_id):
        return f"invalid run id {run_id!r}: expected 12 lowercase hex characters"
    return None


def row_problem(
    record: RunRecord, templates: Mapping[str, Template], config_file: Path | None = None
) -> str | None:
    """Why a PENDING row some program wrote cannot be run, or None if it can.

    A missing template's words say whether `config_file` (the daemon's) has it on disk now.
    """
    problem = id_problem(record.id)
    if problem is not None:
        return problem
    if record.template not in templates:
        return unknown_template(record.template, list(templates), config_file)
    try:
        check_config_json(record.config_json)
    except ValidationError as exc:
        return f"config_json: {exc}"
    return None


def prepare(
    record: RunRecord,
    template: Template,
    runs_dir: Path,
    held: Held,
    *,
    claimed_at: datetime | None = None,
) -> LaunchSpec:
    """Create the run directory and its config; the launch spec. OSError if the disk says no."""
    run_dir = rundir.run_dir_for(runs_dir, record.id)
    config = check_config_json(record.config_json)
    config_file = rundir.create_run_dir(run_dir, config, template.config_format)
    attempt = attempt_number(record.attempt)
    spec = launch_spec(record.id, template, run_dir, config_file, held, attempt=attempt)
    return replace(spec, claimed_at=claimed_at)


def launch_spec(
    run_id: str,
    template: Template,
    run_dir: Path,
    config_file: Path,
    held: Held,
    *,
    attempt: int = 1,
) -> LaunchSpec:
    """The command with its placeholders filled in, and the environment SPEC sections 4, 11
    and 15 give (RUNSUP_ATTEMPT always; RUNSUP_RESUME=1 for a later attempt of a template with
    `resume`)."""
    progress = rundir.progress_path(run_dir)
    values = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "config_path": str(config_file),
        "progress_path": str(progress),
        "python": sys.executable,
    }
    env = scrub_environment(os.environ)
    env.update(template.env)
    env.update(run_env(template, held))
    env.update(
        {
            "RUNSUP_RUN_ID": run_id,
            "RUNSUP_RUN_DIR": str(run_dir),
            "RUNSUP_PROGRESS_FILE": str(progress),
            "PYTHONUNBUFFERED": "1",
            ATTEMPT_VARIABLE: str(attempt),
        }
    )
    if template.resume and attempt > 1:
        env[RESUME_VARIABLE] = "1"
    else:
        env.pop(RESUME_VARIABLE, None)  # never from the daemon's own environment
    return LaunchSpec(
        run_id=run_id,
        argv=template.render_command(values),
        cwd=run_dir,
        env=env,
        log_path=rundir.log_path(run_dir),
        record_dir=rundir.record_dir(run_dir),
        cpus=held.cpus or 1,
        gpu_ids=held.gpu_tuple,
        memory_max=held.memory_max_bytes,
        cpu_ids=held.cpu_ids,
        timeout_seconds=template.timeout_seconds,
        gpus=template.gpus,
        attempt=attempt,
        checkpoint_signal=template.checkpoint_signal,
        checkpoint_seconds=template.checkpoint_seconds,
    )
