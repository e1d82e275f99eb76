"""Pruning old final runs (SPEC section 7 `runsup db prune`, and `[retention] keep_days`):
the rows through supervisor.db.prune, the run directories here, after each batch commits.

A run directory is removed only where runsup itself puts them, `<runs_dir>/<id>` of the
configuration's runs_dir or an executor's: a row's `run_dir` column is written by other
programs too, so it is never taken as a path to delete.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from supervisor import rundir
from supervisor.db import Store, is_valid_run_id
from supervisor.db.prune import Pruned, PruneResult, prune
from supervisor.settings import Settings

log = structlog.get_logger(__name__)

SECONDS_PER_DAY = 86400.0


@dataclass
class RetentionResult:
    """What a prune did: rows (supervisor.db.prune) and run directories."""

    rows: PruneResult
    dirs_removed: int = 0
    dir_errors: list[str] = field(default_factory=list)


def cutoff_for(keep_days: float, now: datetime) -> datetime:
    """Runs that ended before this are older than `keep_days`."""
    return now - timedelta(seconds=keep_days * SECONDS_PER_DAY)


def run_roots(settings: Settings) -> list[Path]:
    """The folders runsup makes run directories in: runs_dir and each executor's."""
    roots = [settings.runs_dir, *(e.runs_dir for e in settings.executors.values())]
    return list(dict.fromkeys(roots))


def prune_runs(
    store: Store,
    settings: Settings,
    ended_before: datetime,
    *,
    files: bool,
    dry_run: bool = False,
    on_batch: Callable[[Pruned], None] | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> RetentionResult:
    """Delete final runs that ended before `ended_before`, and with `files` their run
    directories (once their rows are gone; `dry_run` counts the directories there are)."""
    roots = run_roots(settings)
    dirs = [0]
    errors: list[str] = []

    def after(batch: Pruned) -> None:
        if files:
            for run_id in batch.run_ids:
                dirs[0] += _remove_run_dir(roots, run_id, errors, dry_run=dry_run)
        if on_batch is not None:
            on_batch(batch)

    rows = prune(store, ended_before, dry_run=dry_run, on_batch=after, keep_going=keep_going)
    return RetentionResult(rows, dirs[0], errors)


def _remove_run_dir(roots: list[Path], run_id: str, errors: list[str], *, dry_run: bool) -> int:
    """Remove the run's directories under `roots`; how many there were."""
    if not is_valid_run_id(run_id):  # a foreign row's id never names a path
        return 0
    found = 0
    for root in roots:
        path = rundir.run_dir_for(root, run_id)
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue
        if not stat.S_ISDIR(mode):  # a symlink or a file someone put there: left alone
            continue
        found += 1
        if dry_run:
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
            log.warning("prune_run_dir_failed", run_id=run_id, path=str(path), error=str(exc))
    return found
