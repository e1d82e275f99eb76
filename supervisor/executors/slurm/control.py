"""The Slurm executor's job control on its control lane: signals (SIGKILL: cancel) and the
removal of a queued job that a cancel asks for (done only while the cluster says it waits).
"""

from __future__ import annotations

import signal

import structlog

from supervisor.executors.slurm.commands import SlurmCommands, SlurmError
from supervisor.executors.slurm.handles import JobSlot, kill_or_signal
from supervisor.executors.slurm.lanes import Lane
from supervisor.executors.slurm.parsing import JobState
from supervisor.executors.slurm.table import JobTable

log = structlog.get_logger(__name__)


class JobControl:
    """scancel for one executor's jobs; writes a slot's cancel outcome through the table's lock."""

    def __init__(self, commands: SlurmCommands, table: JobTable, control: Lane) -> None:
        self._commands = commands
        self._table = table
        self._control = control

    def send_signal(self, job_id: str, sig: int) -> None:
        """Signal the job's processes; SIGKILL cancels the job (on the control lane)."""
        self._control.put(lambda: self._signal_job(job_id, sig))

    def cancel_queued(self, slot: JobSlot) -> None:
        """Remove the slot's job if the cluster says it still waits (on the control lane)."""
        self._control.put(lambda: self._remove_queued(slot))

    def _signal_job(self, job_id: str, sig: int) -> None:
        wanted = kill_or_signal(sig)
        if wanted is not None:
            # scancel --signal to a job that waits (again: requeued) retries until it times
            # out and signals nothing: a job with no processes is cancelled plainly instead.
            try:
                info = self._commands.state_of(job_id)
            except SlurmError as exc:
                log.warning("slurm_signal_state_unknown", job_id=job_id, error=str(exc))
                info = None
            if info is not None and (info.final or info.purged):
                return
            if info is not None and info.state is JobState.PENDING:
                log.info("slurm_signal_to_waiting_job", job_id=job_id, signal=wanted.name)
                wanted = None
        self.cancel(job_id, wanted)

    def cancel(self, job_id: str, sig: signal.Signals | None = None) -> None:
        """Cancel the job (or, with `sig`, signal it if it runs), on the calling lane."""
        try:
            # A signal only to a job that runs (one that waits again would make scancel retry).
            self._commands.cancel(job_id, sig, only_running=sig is not None)
        except SlurmError as exc:
            log.warning("slurm_cancel_failed", job_id=job_id, error=str(exc))
        with self._table.lock:
            self._table.query_soon()  # see the effect with the next poll

    def _remove_queued(self, slot: JobSlot) -> None:
        with self._table.lock:
            job_id = slot.job_id
            if job_id is None or slot.cancel_decided or not self._table.holds(slot):
                return  # sbatch has not answered (it hands over then), or decided, or let go
        try:
            # Atomic in the controller: a job that has started is left alone.
            self._commands.cancel(job_id, only_pending=True)
            info = self._commands.state_of(job_id)
        except SlurmError as exc:
            log.warning("slurm_remove_failed", job_id=job_id, error=str(exc))
            self._control.put(lambda: self._remove_queued(slot))  # unknown: ask again
            return
        if info.state is JobState.PENDING:
            self._control.put(lambda: self._remove_queued(slot))  # not yet seen: ask again
            return
        with self._table.lock:
            slot.cancel_decided = True
            slot.info = info
            if info.state is JobState.CANCELLED:
                slot.removed = True
                log.info("slurm_job_removed", run_id=slot.run_id, job_id=job_id)
            else:
                log.info("slurm_job_started_before_cancel", run_id=slot.run_id, job_id=job_id)
            self._table.query_soon()  # a started one gets its stand-in with the next query
            self._table.tell([slot.run_id])
