"""Words that tell a person why something did not happen and what to do (pure, no database).

- why a FAILED run was not retried although its template has `max_attempts` > 1;
- whether a template a run names is in the configuration file on disk when the daemon's loaded
  configuration lacks it (the file was edited and the daemon not reloaded);
- how to lift a pause, which differs for the whole queue and a template.
"""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.db import QUEUE_ALL, RunRecord
from supervisor.errors import SupervisorError
from supervisor.outcome import KIND_OUT_OF_MEMORY, KIND_SIGNAL, KIND_TIMEOUT, OUT_OF_MEMORY
from supervisor.settings import RETRY_EXIT_PREFIX, Template, load_settings
from supervisor.states import RunStatus

RELOAD_HOW = "reload the daemon: `systemctl reload run-supervisor` or `kill -HUP <daemon pid>`"
TIMEOUT_PREFIX = "timeout"


def outcome_kind(run: RunRecord) -> str | None:
    """The `retry_on` name of how a FAILED run's last attempt ended, when the row tells it."""
    message = (run.error_message or "").lower()
    if message.startswith(TIMEOUT_PREFIX):
        return KIND_TIMEOUT
    if message.startswith(OUT_OF_MEMORY):
        return KIND_OUT_OF_MEMORY
    if run.exit_signal is not None:
        return KIND_SIGNAL
    if run.exit_code is not None:
        return f"{RETRY_EXIT_PREFIX}{run.exit_code}"
    return None


def retry_note(run: RunRecord, template: Template | None) -> str | None:
    """Why a FAILED run of a template that retries was not retried, or None."""
    if run.status != RunStatus.FAILED or template is None or template.max_attempts <= 1:
        return None
    if run.started_at is None:
        return "not retried: it never started (a run that cannot start is never retried)"
    attempt = run.attempt or 1
    if attempt >= template.max_attempts:
        return f"not retried: attempt {attempt} was the last (max_attempts {template.max_attempts})"
    kind = outcome_kind(run)
    if kind is None:
        return None
    names = ", ".join(template.retry_on) or "nothing"
    return (
        f"not retried: {kind} is not in retry_on ({names}); "
        f'add "{kind}" (or "{RETRY_EXIT_PREFIX}any") to the template\'s retry_on to retry it'
    )


def pause_hint(scope: str) -> str:
    """The command that lifts a pause of `scope`."""
    return "runsup resume" if scope == QUEUE_ALL else f"runsup resume {scope}"


# (path, mtime_ns, size) -> the template names the file held then: a queue full of rows of one
# missing template reads the file once, not once a row.
_FILE_TEMPLATES: dict[tuple[str, int, int], frozenset[str] | None] = {}


def _templates_on_disk(path: Path) -> frozenset[str] | None:
    """The template names the configuration file holds now; None if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    key = (str(path), info.st_mtime_ns, info.st_size)
    if key not in _FILE_TEMPLATES:
        try:
            names: frozenset[str] | None = frozenset(load_settings(path, environ={}).templates)
        except (SupervisorError, OSError, ValueError):
            names = None
        _FILE_TEMPLATES.clear()
        _FILE_TEMPLATES[key] = names
    return _FILE_TEMPLATES[key]


def unknown_template(name: str, known: list[str], config_file: Path | None) -> str:
    """The words for a run whose template the daemon's configuration lacks (SPEC section 7)."""
    words = f"unknown template {name!r} (known: {', '.join(sorted(known))})"
    if config_file is None:
        return f"{words}; the daemon reads no configuration file: start it with --config FILE"
    on_disk = _templates_on_disk(config_file)
    if on_disk is None:
        return f"{words}; the configuration file {config_file} cannot be read now"
    if name in on_disk:
        return (
            f"{words}: the configuration file {config_file} has it now, but the daemon has not "
            f"reloaded it; {RELOAD_HOW}, then resubmit"
        )
    return f"{words}; the configuration file {config_file} does not have it either"
