"""Jobs looked for by name after a restart (a claim without a job id: a daemon may have died
between sbatch and recording the id). The names are asked in one batch on the control lane.
"""

from __future__ import annotations

import threading
from datetime import datetime

import structlog

from supervisor.executors.slurm.commands import SlurmCommands, SlurmError
from supervisor.executors.slurm.lanes import Lane

log = structlog.get_logger(__name__)


class NameFinder:
    """Owns the names to look for and what was found for them."""

    def __init__(self, commands: SlurmCommands, control: Lane) -> None:
        self._commands = commands
        self._control = control
        self._lock = threading.Lock()
        # name -> job id found (None: none), and the names still to look for -> the claim
        # their job must be younger than.
        self._found: dict[str, str | None] = {}
        self._queued: dict[str, datetime | None] = {}

    def lookup(self, name: str, claimed_at: datetime | None) -> tuple[bool, str | None]:
        """(True, the job id or None for no job) once the name was looked for; else
        (False, None), the look-up queued on the control lane."""
        with self._lock:
            if name in self._found:
                job_id = self._found.pop(name)
                self._queued.pop(name, None)
                return True, job_id
            if name not in self._queued:
                self._queued[name] = claimed_at
                self._control.put(self._find_names)
            return False, None

    def _find_names(self) -> None:
        with self._lock:
            wanted = {n: t for n, t in self._queued.items() if n not in self._found}
        if not wanted:
            return
        # Each name among the jobs submitted since its own claim (a claim without a time:
        # NAME_LOOKBACK).
        since = {n: t for n, t in wanted.items() if t is not None}
        try:
            found = self._commands.find_by_name(wanted, since=since)
        except SlurmError as exc:
            log.warning("slurm_find_failed", runs=len(wanted), error=str(exc))
            with self._lock:
                for name in wanted:
                    self._queued.pop(name, None)  # asked again at the next look
            return
        with self._lock:
            for name in wanted:
                self._found[name] = found.get(name)
