"""A cluster run as the loop sees it: the launch while the job waits, the handle once it runs.

Both read what the executor's worker thread last learnt of their job (`JobSlot`, shared under
the executor's lock) and never wait: what needs a Slurm command (scancel) is handed to the
worker through `Worker`.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from supervisor.errors import LaunchCancelled, LaunchError
from supervisor.executors.backoff import Backoff
from supervisor.executors.base import ExitStatus, ProcessRecord
from supervisor.executors.slurm.jobs import exit_status_of, job_over
from supervisor.executors.slurm.parsing import JobInfo, JobState
from supervisor.executors.slurm.standin import StandIn

# A queued job may wait for days: the launch's deadline is only a backstop (the executor's
# poll() brings its news), pushed this far ahead at every poll.
LAUNCH_DEADLINE_SECONDS = 3600.0


class Worker(Protocol):
    """What the handles ask of the executor (all of it asynchronous)."""

    lock: threading.Lock

    def tell(self, run_id: str) -> None:
        """Called with the lock held: the run has news for the loop's next pass."""
        ...

    def send_signal(self, job_id: str, sig: int) -> None:
        """Signal the job's processes (SIGKILL: cancel it), on the worker thread."""
        ...

    def cancel_queued(self, slot: JobSlot) -> None:
        """Remove the job from the queue if it is still queued (asking the cluster first);
        the launch then says whether it was removed or has started."""
        ...

    def end_standin(self, slot: JobSlot) -> None:
        """End the slot's stand-in (the run is settled) and forget the job."""
        ...

    def forget(self, slot: JobSlot) -> None:
        """Stop looking at the job (the loop let go of it)."""
        ...


@dataclass
class JobSlot:
    """One run's job as the executor knows it; written by the worker under the lock."""

    run_id: str
    record_dir: Path
    attempt: int = 1
    claimed_at: datetime | None = None  # jobs by name are looked for among later ones
    job_id: str | None = None
    info: JobInfo | None = None  # the cluster's last answer (None: not asked yet)
    error: str | None = None  # the launch failed before the job could run
    standin: StandIn | None = None
    handle: SlurmRunHandle | None = None
    starting: bool = False  # the worker is starting its stand-in
    cancelled: bool = False  # a cancel was asked while the job was being launched
    removed: bool = False  # ... and it was removed before it started (or never submitted)
    cancel_decided: bool = False  # the cluster said whether it still waited (see removed)
    exit: ExitStatus | None = None  # decided once, when the job is over
    submit_attempts: int = 0
    missing: int = 0  # answers in a row that no longer listed the job (see the executor)

    @property
    def over(self) -> bool:
        """True once the cluster says the job ended (or has no record of it)."""
        return self.info is not None and job_over(self.info)


class SlurmLaunch:
    """A job submitted (or being submitted) and not yet seen running."""

    def __init__(self, worker: Worker, slot: JobSlot) -> None:
        self._worker = worker
        self._slot = slot
        self.run_id = slot.run_id
        self.deadline = time.monotonic() + LAUNCH_DEADLINE_SECONDS
        self.external_id: str | None = slot.job_id

    def fileno(self) -> int | None:
        """None: the executor's poll() says when there is news."""
        return None

    def poll(self) -> SlurmRunHandle | None:
        """The handle once the job runs (or ended); LaunchError if it could not be submitted."""
        self.deadline = time.monotonic() + LAUNCH_DEADLINE_SECONDS
        with self._worker.lock:
            slot = self._slot
            self.external_id = slot.job_id
            if slot.removed:
                self._worker.forget(slot)
                raise LaunchCancelled("cancelled before it started")
            if slot.error is not None:
                error = slot.error
                self._worker.forget(slot)
                if slot.cancelled:
                    raise LaunchCancelled(f"cancelled before it started ({error})")
                raise LaunchError(error)
            if slot.handle is not None and slot.over:
                # It ended before it was seen running: the loop's next pass settles it.
                self._worker.tell(slot.run_id)
            return slot.handle

    def abandon(self) -> None:
        """The loop is exiting: the job goes on; the next daemon finds it by its id."""
        with self._worker.lock:
            self._worker.forget(self._slot)

    def cancel(self) -> bool:
        """Always False: whether the job still waits is asked of the cluster (the last query
        may be seconds old, and a job that has just started must get its grace and its exit
        code). A job still queued is removed and poll() raises LaunchCancelled; one that has
        started comes back from poll() as a handle, to be cancelled as a running run."""
        with self._worker.lock:
            slot = self._slot
            if slot.handle is not None or slot.starting or slot.cancelled:
                return False
            if slot.info is not None and slot.info.state is not JobState.PENDING:
                return False  # seen started: its handle comes, cancelled as a running run
            slot.cancelled = True
        self._worker.cancel_queued(slot)
        return False


class SlurmRunHandle:
    """A running job, through its local stand-in (pid, pgid) and the executor's queries."""

    def __init__(self, worker: Worker, slot: JobSlot, record: ProcessRecord) -> None:
        self._worker = worker
        self._slot = slot
        self.record = record
        self._closed = False
        self._backoff = Backoff()

    @property
    def job_id(self) -> str:
        """The cluster's id of the job."""
        return self.record.external_id or ""

    def fileno(self) -> int | None:
        """None: the executor's poll() says when the job has ended."""
        return None

    def exit_status(self) -> ExitStatus | None:
        """None while the cluster says the job goes on (or cannot be asked); then its status."""
        with self._worker.lock:
            slot = self._slot
            if slot.exit is None and slot.info is not None and job_over(slot.info):
                slot.exit = exit_status_of(slot.info, slot.record_dir)
            return slot.exit

    def signal_group(self, sig: int) -> bool:
        """TERM/INT/HUP reach the job's processes (scancel --full); KILL cancels the job."""
        if sig == signal.SIGKILL:
            self._backoff.reset()
        with self._worker.lock:
            if self._slot.over:
                return False
        self._worker.send_signal(self.job_id, sig)
        return True

    def group_alive(self) -> bool:
        """True until the cluster says the job is over."""
        with self._worker.lock:
            return not self._slot.over

    def leftover_fileno(self) -> int | None:
        """None: the loop looks again on a timer (the job's end comes with a query)."""
        return None

    def group_check_delay(self) -> float:
        """Seconds until the job is worth another look (doubling while the cluster says no)."""
        return self._backoff.next()

    def release(self) -> None:
        """The run is settled: end the stand-in, stop asking about the job."""
        if not self._closed:
            self._closed = True
            self._worker.end_standin(self._slot)

    def close(self) -> None:
        """The loop lets go of the run (settled, or the daemon detaches): stop asking."""
        if not self._closed:
            self._closed = True
            with self._worker.lock:
                self._worker.forget(self._slot)


def kill_or_signal(sig: int) -> signal.Signals | None:
    """The signal scancel sends for `sig`: None (a plain cancel) for SIGKILL."""
    return None if sig == signal.SIGKILL else signal.Signals(sig)
