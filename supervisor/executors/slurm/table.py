"""The Slurm executor's job table: each held run's `JobSlot`, the runs with news for the loop,
and when the next batched query is due. One lock guards it; the lanes and the handles share it.

The query's answers are stored here (`take_answers`): a job last seen alive that the cluster
no longer lists is taken as gone only after PURGE_CONFIRM_QUERIES answers without it, and a job
seen started that waits in the queue again (requeued) loses the exit status of its last run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import structlog

from supervisor.executors.local.keeper import EXIT_FILE
from supervisor.executors.slurm.handles import JobSlot
from supervisor.executors.slurm.jobs import job_over, job_started
from supervisor.executors.slurm.parsing import JobInfo, JobState

log = structlog.get_logger(__name__)

# The worker wakes the loop when a query is due; never more often than this.
MIN_WAKE_SECONDS = 0.05
# A job seen alive that the cluster no longer lists is taken as gone only after this many
# answers in a row without it (a requeue can hide it for a moment).
PURGE_CONFIRM_QUERIES = 3


class JobTable:
    """The runs' jobs while the loop holds them; the only writer of the slots' query answers."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self._wake = wake
        self._slots: dict[str, JobSlot] = {}  # run id -> its job, while the loop holds it
        self._news: set[str] = set()
        self._next_query = 0.0
        self._query_queued = False
        # Batched queries made, and the most jobs one asked about (for tests and bench/).
        self.queries = 0
        self.largest_query = 0

    def add(self, slot: JobSlot, *, query_soon: bool = False) -> None:
        """Hold the slot's job (`query_soon`: look at it with the next poll)."""
        with self.lock:
            self._slots[slot.run_id] = slot
            if query_soon:
                self._next_query = 0.0

    def holds(self, slot: JobSlot) -> bool:
        """Called with the lock held: True while this slot is the one held for its run."""
        return self._slots.get(slot.run_id) is slot

    def forget(self, slot: JobSlot) -> None:
        """Called with the lock held: stop tracking the slot's job."""
        if self._slots.get(slot.run_id) is slot:
            del self._slots[slot.run_id]
        self._news.discard(slot.run_id)

    def held_dirs(self) -> list[Path]:
        """The record directories of every run held."""
        with self.lock:
            return [slot.record_dir for slot in self._slots.values()]

    def tell(self, run_ids: Collection[str]) -> None:
        """Called with the lock held: these runs have news for the loop."""
        if run_ids:
            self._news.update(run_ids)
            self._wake()

    def query_soon(self) -> None:
        """Called with the lock held: make the next poll start a query."""
        self._next_query = 0.0

    # -- the batched query -----------------------------------------------------------------

    def until_due(self) -> float | None:
        """Seconds until the next query is due (None: no job to ask about, or one queued)."""
        with self.lock:
            if self._query_queued or not self._watching():
                return None
            return max(MIN_WAKE_SECONDS, self._next_query - time.monotonic())

    def _watching(self) -> bool:
        """Called with the lock held: True while a job of ours may still change."""
        return any(s.job_id is not None and not s.over for s in self._slots.values())

    def take_news(self, now: float, interval: float) -> tuple[set[str], bool]:
        """The runs with news since last time, and whether a query is due now (it is then
        taken as queued, and the next one due `interval` seconds on)."""
        with self.lock:
            news, self._news = self._news, set()
            due = not self._query_queued and now >= self._next_query and self._watching()
            if due:
                self._query_queued = True
                self._next_query = now + interval
        return news, due

    def to_ask(self) -> dict[str, JobSlot]:
        """The queued query starts: the jobs to ask about (job id -> slot), counted."""
        with self.lock:
            self._query_queued = False
            asked = {
                s.job_id: s for s in self._slots.values() if s.job_id is not None and not s.over
            }
            if asked:
                self.queries += 1
                self.largest_query = max(self.largest_query, len(asked))
        return asked

    def take_answers(
        self, asked: dict[str, JobSlot], answers: dict[str, JobInfo]
    ) -> tuple[list[JobSlot], list[tuple[JobSlot, JobInfo]]]:
        """Store a query's answers; the launches whose job started, and the runs whose job is
        now over with that answer (held back from the slot until its stand-in is ended)."""
        to_start: list[JobSlot] = []
        ended: list[tuple[JobSlot, JobInfo]] = []
        with self.lock:
            for job_id, slot in asked.items():
                info = answers.get(job_id)
                if info is None or self._slots.get(slot.run_id) is not slot:
                    continue
                if _vanishing(slot, info):
                    continue  # not listed, just after it was seen alive: ask again
                if slot.handle is not None and job_over(info):
                    ended.append((slot, info))
                    continue
                if _requeued(slot.info, info):
                    # Back in the queue: the exit status its keeper wrote when the job was
                    # stopped is not this job's end (it may fail to start again, and never
                    # run the script that would replace it).
                    (slot.record_dir / EXIT_FILE).unlink(missing_ok=True)
                    log.warning("slurm_job_requeued", run_id=slot.run_id, job_id=job_id)
                slot.info = info
                if slot.cancelled and slot.handle is None and not slot.cancel_decided:
                    continue  # the control lane is asking whether it still waits
                started = slot.handle is None and not slot.removed and job_started(info)
                if started and not slot.starting:
                    slot.starting = True
                    to_start.append(slot)
        return to_start, ended

    def mark_ended(self, ended: list[tuple[JobSlot, JobInfo]]) -> None:
        """The slots now say their job is over (their stand-ins are told to go already)."""
        with self.lock:
            news = []
            for slot, info in ended:
                if not slot.over:
                    news.append(slot.run_id)
                slot.info = info
            self.tell(news)


def _vanishing(slot: JobSlot, info: JobInfo) -> bool:
    """Called with the lock held: True while a job last seen alive is missing from fewer
    than PURGE_CONFIRM_QUERIES answers in a row. A job's record outlives its end by
    MinJobAge (minutes), so a job seen running does not vanish at once; one being
    requeued can be missing for a moment (it then waits in the queue again)."""
    last = slot.info
    if not info.purged or last is None or last.final or last.purged:
        slot.missing = 0
        return False
    slot.missing += 1
    if slot.missing < PURGE_CONFIRM_QUERIES:
        log.info("slurm_job_not_listed", run_id=slot.run_id, job_id=info.job_id)
        return True
    return False


def _requeued(last: JobInfo | None, now: JobInfo) -> bool:
    """True when a job seen started is seen waiting in the queue again (requeued)."""
    return (
        last is not None
        and job_started(last)
        and not last.final
        and (now.state is JobState.PENDING)
    )
