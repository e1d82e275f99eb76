"""The Slurm executor (SPEC section 9): runs as batch jobs, watched with one batched query.

Nothing here blocks the daemon's loop. Slurm commands run on three lanes (a thread each, fed
by a queue of operations), so that a slow command of one kind never holds up the others:
`submit` (sbatch, 50-500 ms, or a timeout against a slow controller), `query` (the batched
status query and the stand-ins it starts and ends) and `control` (scancel, and looking for jobs
by name). Each stores what it learns in the runs' `JobSlot`s under one lock and calls `wake()`
when something changed. The loop's `poll()` starts a query only when `poll_interval_seconds`
has passed since the last one (one query for every job of ours, whatever their number) and
returns the run ids with news. A query that fails or times out changes nothing: unknown is
never "finished".

A job's life as the loop sees it: `begin_launch` -> a `SlurmLaunch` (PENDING row, with the
job id once sbatch answers) -> the job runs: the worker starts its local stand-in
(standin.py) and the launch returns a `SlurmRunHandle` (RUNNING row: the stand-in's pid and
pgid, the job id, the node) -> the job is over: the worker tells the stand-in to go, then the
handle gives its exit status (jobs.py), so the stand-in is gone before the loop commits the
final status. A job already over when first seen gets no stand-in (its row names a group that
is gone). At its first poll the executor ends its stand-ins that no recovered run holds
(runs a killed daemon had settled), and a stand-in whose job no cluster knows ends by itself.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import structlog

from supervisor.errors import LaunchError
from supervisor.executors.base import (
    Adopted,
    LaunchSpec,
    NeverStarted,
    ProcessIdentity,
    ProcessRecord,
    Queued,
    Recovery,
    RunHandle,
    RunRef,
    StillStarting,
)
from supervisor.executors.local.keeper import EXIT_FILE
from supervisor.executors.slurm.commands import (
    SlurmCommands,
    SlurmError,
    SubmitRejected,
    client_env,
)
from supervisor.executors.slurm.control import JobControl
from supervisor.executors.slurm.finding import NameFinder
from supervisor.executors.slurm.handles import (
    JobSlot,
    SlurmLaunch,
    SlurmRunHandle,
)
from supervisor.executors.slurm.jobs import batch_script, job_variables
from supervisor.executors.slurm.lanes import Lane, Op
from supervisor.executors.slurm.parsing import JobInfo, SubmitRequest, job_name
from supervisor.executors.slurm.standin import end_standin, spent_identity
from supervisor.executors.slurm.standinkeeper import StandInKeeper
from supervisor.executors.slurm.table import JobTable
from supervisor.settings import ExecutorSettings

log = structlog.get_logger(__name__)

# A submit whose outcome is unknown (the controller did not answer) is looked for by name,
# then tried again, at most this many times in all before the launch fails.
SUBMIT_ATTEMPTS = 3
# How long close() waits for the worker to finish the operation it is in (a Slurm command
# has its own timeout; the thread is a daemon thread, so the process never waits for it).
CLOSE_JOIN_SECONDS = 2.0

# Stand-ins started at once when a query finds many jobs newly running.
STANDIN_STARTERS = 8


class SlurmExecutor:
    """Runs on one Slurm cluster (an `[executors.NAME]` table with kind = "slurm")."""

    signals_checkpoints = True  # the job itself: sbatch --signal, also with the daemon down

    def __init__(
        self,
        name: str,
        config: ExecutorSettings,
        *,
        wake: Callable[[], None],
        commands: SlurmCommands | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.poll_interval: float | None = config.poll_interval_seconds
        self.runs_dir: Path | None = config.runs_dir
        self.max_in_flight: int | None = config.max_submitted
        self.commands = commands or SlurmCommands(
            env=client_env(), timeout=config.command_timeout_seconds
        )
        try:
            config.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # each launch then fails saying why
            log.error("executor_runs_dir_unusable", executor=name, error=str(exc))
        self.table = JobTable(wake)
        self.lock = self.table.lock  # the handles' (Worker) lock: the table's
        self._standins = StandInKeeper(name, self.commands, self.runs_dir)
        self._starter = ThreadPoolExecutor(STANDIN_STARTERS, thread_name_prefix=f"slurm-{name}")
        self._started = time.monotonic()
        self._submits = Lane(f"slurm-{name}-submit")
        # A query due wakes the loop, which may be idle until its own timer, to start it.
        self._queries = Lane(f"slurm-{name}-query", idle_timeout=self.table.until_due, on_idle=wake)
        self._control = Lane(f"slurm-{name}-control")
        self._finder = NameFinder(self.commands, self._control)
        self._jobs = JobControl(self.commands, self.table, self._control)
        # Stand-ins of runs no daemon took on again are ended once, at the first poll (after
        # the daemon's recovery has given this executor every run it still holds).
        self._leftovers_swept = False

    @property
    def queries(self) -> int:
        """Batched queries made (for tests and bench/)."""
        return self.table.queries

    @property
    def largest_query(self) -> int:
        """The most jobs one query asked about (for tests and bench/)."""
        return self.table.largest_query

    def _do(self, op: Op) -> None:
        """Run `op` on the control lane (scancel, look-ups by name)."""
        self._control.put(op)

    def tell(self, run_id: str) -> None:
        """Called with the lock held: this run has news for the loop."""
        self.table.tell([run_id])

    # -- launching -----------------------------------------------------------------------

    def begin_launch(self, spec: LaunchSpec) -> SlurmLaunch:
        """Queue the job's submission; the launch gets its id when sbatch answers."""
        env, unset = job_variables(spec.env, self.commands.env, spec.gpus)
        try:
            script = batch_script(
                spec.run_id,
                spec.record_dir,
                spec.argv,
                env,
                unset,
                checkpoint_signal=spec.checkpoint_signal,
            )
        except ValueError as exc:
            raise LaunchError(f"the run's environment cannot be passed to Slurm: {exc}") from None
        request = SubmitRequest(
            run_id=spec.run_id,
            run_dir=spec.cwd,
            script=script,
            log_path=spec.log_path,
            cpus=spec.cpus,
            gpus=spec.gpus,
            memory_bytes=spec.memory_max,
            timeout_seconds=spec.timeout_seconds,
            partition=self.config.partition,
            account=self.config.account,
            sbatch_args=self.config.sbatch_args,
            attempt=spec.attempt,
            checkpoint_signal=spec.checkpoint_signal,
            checkpoint_seconds=_lead_seconds(spec.checkpoint_seconds),
        )
        slot = JobSlot(
            run_id=spec.run_id,
            record_dir=spec.record_dir,
            attempt=spec.attempt,
            claimed_at=spec.claimed_at,  # the job is submitted after it
        )
        self.table.add(slot)
        self._submits.put(lambda: self._submit(slot, request))
        return SlurmLaunch(self, slot)

    def _submit(self, slot: JobSlot, request: SubmitRequest) -> None:
        with self.lock:
            if not self.table.holds(slot):
                return  # abandoned before sbatch ran
            if slot.cancelled and slot.job_id is None:
                slot.removed = True  # cancelled before sbatch ran: nothing was submitted
                self.table.tell([slot.run_id])
                return
            slot.submit_attempts += 1
        # A status left by an earlier attempt of this run must not be read as this job's.
        (slot.record_dir / EXIT_FILE).unlink(missing_ok=True)
        try:
            job_id: str | None = self.commands.submit(request)
        except SubmitRejected as exc:
            self._launch_failed(slot, f"sbatch refused the job: {exc}")
            return
        except SlurmError as exc:
            job_id = self._after_uncertain_submit(slot, request, exc)
            if job_id is None:
                return
        with self.lock:
            slot.job_id = job_id
            self.table.query_soon()  # look at it with the next poll
            self.table.tell([slot.run_id])
            if slot.cancelled:  # asked while sbatch ran: remove it now it exists
                self._jobs.cancel_queued(slot)

    def _after_uncertain_submit(
        self, slot: JobSlot, request: SubmitRequest, exc: SlurmError
    ) -> str | None:
        """sbatch failed in a way that leaves open whether the job exists: look for it by
        name; submit again only if it is surely not there."""
        log.warning("slurm_submit_uncertain", run_id=slot.run_id, error=str(exc))
        name = job_name(slot.run_id, slot.attempt)
        try:
            found = self.commands.find_by_name([name], since=slot.claimed_at)
        except SlurmError as find_exc:
            self._launch_failed(slot, f"could not submit the job: {exc}; {find_exc}")
            return None
        job_id = found.get(name)
        if job_id is not None:
            return job_id
        if slot.submit_attempts >= SUBMIT_ATTEMPTS:
            self._launch_failed(slot, f"could not submit the job: {exc}")
        else:
            self._submits.put(lambda: self._submit(slot, request))
        return None

    def _launch_failed(self, slot: JobSlot, why: str) -> None:
        with self.lock:
            slot.error = why
            self.table.tell([slot.run_id])

    # -- polling -------------------------------------------------------------------------

    def poll(self) -> Collection[str]:
        """Start the batched query when one is due; the run ids with news since last time."""
        now = time.monotonic()
        if not self._leftovers_swept:
            self._leftovers_swept = True
            self._do(self._end_leftovers)
        news, due = self.table.take_news(now, self.poll_interval or 0.0)
        if due:
            self._queries.put(self._query)
        return news

    def _query(self) -> None:
        asked = self.table.to_ask()
        if not asked:
            return
        try:
            answers = self.commands.query(list(asked))
        except SlurmError as exc:
            log.warning("slurm_query_failed", executor=self.name, jobs=len(asked), error=str(exc))
            return  # unknown: nothing changes
        to_start, ended = self.table.take_answers(asked, answers)
        self._settle_ended(ended)
        # A stand-in start mostly waits for two shells to come up: several at once.
        list(self._starter.map(self._start_run, to_start))
        self._standins.reap_watchers()

    def _settle_ended(self, ended: list[tuple[JobSlot, JobInfo]]) -> None:
        """Jobs now over: their stand-ins are told to go first, and only then does the slot
        say the job is over. The loop reads the end (and commits the final status) from the
        slot, so `killpg(pgid, 0)` fails once the row is final, and a daemon killed after
        that commit leaves no stand-in behind."""
        for slot, _ in ended:
            with self.lock:
                standin, slot.standin = slot.standin, None
            if standin is not None:
                self._standins.retire(standin)
        self.table.mark_ended(ended)

    def _start_run(self, slot: JobSlot) -> None:
        """The job was seen running (or ended): give it a stand-in and make its handle. A job
        already over gets none (an earlier daemon's is ended): its row names a group that is
        gone, as that of any ended job."""
        job_id = slot.job_id or ""
        with self.lock:
            over = slot.over
        try:
            if over:
                self._standins.end_found(job_id, slot.record_dir)
                standin = None
                leader = spent_identity()
            else:
                standin = self._standins.for_job(job_id, slot.record_dir)
                leader = standin.leader
        except (LaunchError, OSError) as exc:
            self._jobs.cancel(job_id)  # a run the loop cannot watch must not go on unseen
            self._launch_failed(slot, f"job {job_id} was cancelled: {exc}")
            return
        with self.lock:
            node = slot.info.node if slot.info is not None else None
            slot.standin = standin
            slot.handle = SlurmRunHandle(self, slot, _record(leader, job_id, node))
            slot.starting = False
            self.table.tell([slot.run_id])

    def _end_leftovers(self) -> None:
        """End the stand-ins of runs this daemon did not take on again."""
        self._standins.sweep_leftovers(self.table.held_dirs())

    # -- what the handles and launches ask (Worker) -------------------------------------

    def send_signal(self, job_id: str, sig: int) -> None:
        """Signal the job's processes; SIGKILL cancels the job (on the control lane)."""
        self._jobs.send_signal(job_id, sig)

    def cancel_queued(self, slot: JobSlot) -> None:
        """A cancel while the job is launched: remove it if the cluster says it still waits
        (once sbatch has answered: the submit lane hands it over then)."""
        self._jobs.cancel_queued(slot)

    def end_standin(self, slot: JobSlot) -> None:
        """End the stand-in of a settled run if it stands yet (a job over before it was seen
        running keeps one until then), on the worker thread; forget the job."""
        with self.lock:
            self.forget(slot)
            standin, slot.standin = slot.standin, None
        if standin is not None:
            # Told at once (two small writes), so a daemon killed now leaves nothing waiting;
            # its watcher is reaped on the query lane (which owns the watchers).
            end_standin(standin, timeout=0.0)
            self._queries.put(lambda: self._standins.retire(standin))

    def forget(self, slot: JobSlot) -> None:
        """Called with the lock held: stop tracking the slot's job."""
        self.table.forget(slot)

    # -- after a restart -----------------------------------------------------------------

    def recover(self, ref: RunRef) -> Recovery:
        """Find a run again: its job by id (or, for a claim without one, by name)."""
        if ref.external_id is None:
            if not ref.claimed:
                return NeverStarted("no job id was recorded")
            return self._find_claimed(ref)
        slot = JobSlot(
            run_id=ref.run_id,
            record_dir=ref.record_dir,
            attempt=ref.attempt,
            claimed_at=ref.claimed_at,
            job_id=ref.external_id,
        )
        if ref.claimed:
            # Queued, running or ended: the launch's first query tells, and a job seen
            # running or ended becomes its handle (with a stand-in) then.
            self.table.add(slot, query_soon=True)
            return Queued(SlurmLaunch(self, slot))
        return Adopted(self._adopt(slot, ref))

    def _adopt(self, slot: JobSlot, ref: RunRef) -> RunHandle:
        """A RUNNING row: its stand-in again (or a new one after a reboot); the job's state
        comes with the next query."""
        job_id = ref.external_id or ""
        again = self._standins.found_again(ref.run_id, job_id, ref.record_dir)
        if again.killed_untold:
            self.send_signal(job_id, signal.SIGKILL)
        slot.standin = again.standin
        handle = SlurmRunHandle(self, slot, _record(again.leader, job_id, ref.host))
        slot.handle = handle
        self.table.add(slot, query_soon=True)
        return handle

    def _find_claimed(self, ref: RunRef) -> Recovery:
        """A claim without a job id: a daemon may have died between sbatch and recording the
        id. Look for the job by its name before anything is submitted again."""
        if time.monotonic() - self._started < self.config.command_timeout_seconds:
            # An sbatch the dead daemon started may still be talking to the controller (a
            # child outlives its parent): look only once it would have given up.
            return StillStarting("waiting out a submit an earlier daemon may have begun")
        name = job_name(ref.run_id, ref.attempt)
        done, job_id = self._finder.lookup(name, ref.claimed_at)
        if not done:
            return StillStarting("looking for its job by name")
        if job_id is None:
            return NeverStarted(f"no job named {name} submitted since its claim")
        log.info("slurm_job_found_by_name", run_id=ref.run_id, job_id=job_id)
        return self.recover(
            RunRef(
                run_id=ref.run_id,
                record_dir=ref.record_dir,
                process=ref.process,
                claimed=True,
                external_id=job_id,
                attempt=ref.attempt,
                claimed_at=ref.claimed_at,
            )
        )

    # -- the rest of the interface -------------------------------------------------------

    def adopt_foreign(
        self,
        run_id: str,
        *,
        pid: int | None,
        pgid: int | None,
        started_at: datetime | None,
        start_ticks: int | None,
        record_dir: Path,
    ) -> RunHandle | None:
        """Runs another program started are local processes: none here."""
        return None

    def close(self) -> None:
        """Stop the lanes (jobs and stand-ins go on)."""
        for lane in (self._submits, self._queries, self._control):
            lane.stop(CLOSE_JOIN_SECONDS)
        self._starter.shutdown(wait=False)


def _lead_seconds(seconds: float | None) -> int | None:
    """checkpoint_seconds as sbatch --signal's whole seconds (rounded up: never later)."""
    return None if seconds is None else math.ceil(seconds)


def _record(leader: ProcessIdentity, job_id: str, node: str | None) -> ProcessRecord:
    """The row's process columns for a job: its stand-in's leader (also as the keeper: a
    RUNNING row without keeper_pid would read as started by another program)."""
    return ProcessRecord(
        pid=leader.pid,
        pgid=leader.pid,
        start_ticks=leader.start_ticks,
        boot_id=leader.boot_id,
        keeper_pid=leader.pid,
        keeper_start_ticks=leader.start_ticks,
        external_id=job_id,
        host=node,
    )


def make_executor(
    name: str, config: ExecutorSettings, *, wake: Callable[[], None]
) -> SlurmExecutor:
    """The registry's entry point: a Slurm executor for `[executors.NAME]`."""
    return SlurmExecutor(name, config, wake=wake)
