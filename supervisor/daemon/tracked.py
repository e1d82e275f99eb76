"""What the loop keeps of each run, and the small functions around a run's row and files."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from supervisor import outcome as outcomes
from supervisor import rundir
from supervisor.daemon.resources import Held
from supervisor.daemon.runstate import RunState, StopCause
from supervisor.db import ProgressUpdate, RowChange, RunRecord, running_change
from supervisor.executors.base import Launch, ProcessRecord, RunHandle
from supervisor.progress import logcap
from supervisor.progress.jsonl import ProgressState, ProgressTail
from supervisor.progress.patterns import OutputTail, tail_for
from supervisor.settings import LOCAL_EXECUTOR, Template


@dataclass
class TrackedRun:
    """A run the loop is responsible for, from its start until its final status is committed."""

    run_id: str
    run_dir: Path
    template: Template | None
    template_name: str
    held: Held
    executor: str
    handle: RunHandle
    tail: ProgressTail
    progress: ProgressState
    state: RunState
    output: OutputTail | None = None  # progress from the log's lines (progress_patterns)
    flushed: ProgressUpdate | None = None
    foreign: bool = False  # started by another program (SPEC section 3): no keeper, no status
    # Another program rewrote the row under our launch: the run is killed and, once its group
    # is gone, its cgroup removed and forgotten without a status write (issue 20, 12).
    disowned: bool = False
    exit_fd: int | None = None  # registered with the selector until the run ends
    leftover_fd: int | None = None  # registered with the selector while the group lingers
    group_check_at: float | None = None  # when its lingering group is looked at (handle's delay)
    attempt: int = 1  # the row's attempt (SPEC section 11)

    @property
    def timeout_seconds(self) -> float | None:
        """The template's wall-clock limit."""
        return self.template.timeout_seconds if self.template else None

    def progress_update(self) -> ProgressUpdate:
        """The run's progress as a row update."""
        return update_of(self.run_id, self.progress, self.tail, self.output)


@dataclass
class InFlight:
    """A launch begun and not yet reported back."""

    launch: Launch
    record: RunRecord
    template: Template
    run_dir: Path
    held: Held
    fd: int | None  # registered with the selector (unregistered by number: poll closes it)
    executor: str = LOCAL_EXECUTOR
    external_recorded: bool = False  # its job id is in the row


def running(run_id: str, proc: ProcessRecord, run_dir: Path, reason: str) -> RowChange:
    return running_change(run_id, proc, run_dir=str(run_dir), reason=reason)


def stop_cause(record: RunRecord) -> StopCause | None:
    """Why an earlier daemon was stopping this run, from its row: the earlier request wins."""
    cancel, timeout = record.cancel_requested_at, record.timed_out_at
    if cancel is not None and (timeout is None or cancel <= timeout):
        return StopCause.CANCEL
    if timeout is not None:
        return StopCause.TIMEOUT
    return None


def read_on(
    record: RunRecord, run_dir: Path, template: Template | None
) -> tuple[ProgressState, ProgressUpdate]:
    """A run's progress read on from where the last daemon stopped: its state and row update."""
    tail, output = tails_for(record, run_dir, template)
    state = progress_of(record)
    for rec in tail.read_to_end():
        state = state.fold(rec)
    for rec in output.read_to_end() if output is not None else ():
        state = state.fold(rec)
    update = update_of(record.id, state, tail, output)
    if output is None:  # patterns removed from the template since: keep where it was
        update = replace(update, output_offset=record.output_offset)
    return state, update


def tails_for(
    record: RunRecord, run_dir: Path, template: Template | None
) -> tuple[ProgressTail, OutputTail | None]:
    """The run's progress.jsonl tail and (with progress_patterns) log tail, resumed where the
    row says the last daemon stopped."""
    tail = ProgressTail(
        rundir.progress_path(run_dir), offset=record.progress_offset or 0, run_id=record.id
    )
    tail.bad_lines = record.progress_bad_lines or 0
    output = tail_for(
        template.progress_patterns if template else (),
        rundir.log_path(run_dir),
        record.output_offset or 0,
        run_id=record.id,
    )
    return tail, output


def update_of(
    run_id: str, state: ProgressState, tail: ProgressTail, output: OutputTail | None
) -> ProgressUpdate:
    """A run's progress and read positions as a row update."""
    return ProgressUpdate(
        run_id=run_id,
        current_erlang=state.current_erlang,
        total_erlangs=state.total_erlangs,
        current_iteration=state.current_iteration,
        total_iterations=state.total_iterations,
        erlang_index=state.erlang_index,
        offset=tail.offset,
        bad_lines=tail.bad_lines + (output.bad_lines if output else 0),
        output_offset=output.offset if output else None,
    )


def progress_of(record: RunRecord) -> ProgressState:
    return ProgressState(
        current_erlang=record.current_erlang,
        total_erlangs=record.total_erlangs,
        current_iteration=record.current_iteration,
        total_iterations=record.total_iterations,
        erlang_index=record.erlang_index,
    )


def log_tail(run_dir: Path) -> str | None:
    lines = logcap.tail_lines(rundir.log_path(run_dir))
    return "\n".join(lines[-outcomes.LOG_TAIL_LINES :]) or None


def record_dir_of(record: RunRecord, runs_dir: Path) -> Path:
    """The run directory a row names, else the one the daemon would have made."""
    return Path(record.run_dir) if record.run_dir else runs_dir / record.id
