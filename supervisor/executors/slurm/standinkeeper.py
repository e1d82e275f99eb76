"""The Slurm executor's stand-ins (standin.py) as a set: started for jobs seen running, found
again after a restart, ended when their run settles, and the watchers of ended ones reaped.

The watchers list belongs to the query lane (`retire` and `reap_watchers` run only there).
At its first poll the executor sweeps the stand-ins of runs no daemon took on again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from supervisor.executors.base import ProcessIdentity
from supervisor.executors.slurm.commands import SlurmCommands
from supervisor.executors.slurm.standin import (
    StandIn,
    StandInState,
    end_standin,
    find_standin,
    leftover_standins,
    reap_watcher,
    standin_state,
    start_standin,
    was_killed,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FoundAgain:
    """A RUNNING row's stand-in after a restart: whose leader the row names, the one standing
    (None: ended or killed), and whether it was killed untold (its job is to be cancelled)."""

    leader: ProcessIdentity
    standin: StandIn | None
    killed_untold: bool


class StandInKeeper:
    """Starts, finds and ends one executor's stand-ins; owns the watchers left to reap."""

    def __init__(self, executor: str, commands: SlurmCommands, runs_dir: Path | None) -> None:
        self._executor = executor
        self._commands = commands
        self._runs_dir = runs_dir
        self._watchers: list[int] = []  # watchers of ended stand-ins, to reap (query lane)

    def for_job(self, job_id: str, record_dir: Path) -> StandIn:
        """The job's stand-in: the one an earlier daemon started if it still stands, else a
        new one."""
        found = find_standin(job_id, record_dir)
        if found is not None and standin_state(found) is StandInState.ALIVE:
            return found
        return self._new(job_id, record_dir)

    def _new(self, job_id: str, record_dir: Path) -> StandIn:
        return start_standin(
            job_id,
            record_dir,
            self._commands.env,
            scancel=self._commands.programs.scancel,
            squeue=self._commands.programs.squeue,
            executor=self._executor,
        )

    def end_found(self, job_id: str, record_dir: Path) -> None:
        """End the stand-in an earlier daemon left for this job, if one still stands."""
        found = find_standin(job_id, record_dir)
        if found is not None and standin_state(found) is StandInState.ALIVE:
            end_standin(found, timeout=0.0)

    def found_again(self, run_id: str, job_id: str, record_dir: Path) -> FoundAgain:
        """A RUNNING row's stand-in again (or a new one after a reboot)."""
        found = find_standin(job_id, record_dir)
        state = standin_state(found) if found is not None else None
        # Its leader died untold and its watcher with it: the SIGKILL meant cancel.
        killed_untold = found is not None and state is StandInState.KILLED and not was_killed(found)
        if killed_untold:
            log.warning("slurm_standin_killed_while_away", run_id=run_id, job_id=job_id)
        standin: StandIn | None = None
        if found is None or state is StandInState.LOST:
            # After a reboot (or with no trace of one): the job goes on, a new stand-in too.
            found = standin = self._new(job_id, record_dir)
            log.info("slurm_standin_restarted", run_id=run_id, job_id=job_id)
        elif state is StandInState.ALIVE:
            standin = found
        # else ended or killed: the job is over or being cancelled; the row keeps its pid
        return FoundAgain(found.leader, standin, killed_untold)

    def sweep_leftovers(self, held: list[Path]) -> None:
        """End the stand-ins of runs this daemon did not take on again (their rows are final:
        a daemon killed between settling a run and ending its stand-in left them)."""
        if self._runs_dir is None:
            return
        for standin in leftover_standins(self._runs_dir, self._executor, held):
            log.warning("slurm_standin_left_over", record_dir=str(standin.record_dir))
            end_standin(standin, timeout=0.0)

    def retire(self, standin: StandIn) -> None:
        """On the query lane: tell the stand-in to go; its watcher is reaped later."""
        # Told to go, the stand-in exits by itself; its watcher (our child) is reaped later,
        # so ending one costs no wait on the worker.
        end_standin(standin, timeout=0.0)
        self.reap_watchers()
        if standin.watcher_pid is not None:
            self._watchers.append(standin.watcher_pid)

    def reap_watchers(self) -> None:
        """On the query lane: reap the watchers of ended stand-ins that have exited."""
        self._watchers = [pid for pid in self._watchers if not reap_watcher(pid)]
