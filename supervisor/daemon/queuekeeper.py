"""The queue in the daemon (SPEC sections 11 and 13): what may start, what can never start,
retries, and on_finish hooks. The loop calls in at a few points:

- `sync()` on every database pass: reads the pauses, cancels runs whose dependencies can never
  be met (and dependency cycles), and hands runs that reached a final status to their hooks;
- `pickup(free)` instead of a plain PENDING query: queue order, waits and per-template limits;
- `retry_change(...)` when a run would settle FAILED: its next attempt instead, or None;
- `poll_hooks()` on every pass: records hooks that ended;
- `due(now)` / `next_due()`: the earliest `not_before` to come, so the loop looks again then.

Decisions that need no database live in supervisor.queue.rules; SQL in the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import structlog

from supervisor import rundir
from supervisor.daemon.clock import Clock
from supervisor.daemon.outbox import Outbox
from supervisor.daemon.services import Services
from supervisor.db import QUEUE_ALL, RowChange, RunRecord, Store, final_change, hook_done_change
from supervisor.db import retry_change as make_retry_change
from supervisor.hooks import HookRunner, hook_call
from supervisor.outcome import CHECKPOINTED, KIND_OUT_OF_MEMORY, Outcome
from supervisor.queue.rules import attempt_number, find_cycles, plan_retry
from supervisor.settings import Settings, Template
from supervisor.states import RunStatus

log = structlog.get_logger(__name__)

# Dependency cycles are looked for at start and then this often (only other programs can make
# one: `runsup submit` names runs that exist, so a new run cannot close a cycle).
CYCLE_CHECK_INTERVAL_SECONDS = 30.0
# Cascading cancels down a chain of dependencies: at most this many rounds in one pass (each
# round is one commit; the rest follows in the next pass).
MAX_CASCADE_ROUNDS = 50
# At start, final runs whose hook has not run are hooked if they ended at most this long ago
# (a database from before hooks, or a hook added to the configuration, must not fire for
# every run in its history).
HOOK_CATCHUP_SECONDS = 7 * 24 * 3600.0
# A previous attempt's files go here inside the run directory: attempt-1/, attempt-2/, ...
ATTEMPT_DIR_PREFIX = "attempt-"


def archive_attempt(run_dir: Path, attempt: int) -> list[str]:
    """Move attempt `attempt`'s record dir, progress file and log into `attempt-N/`.

    Idempotent and safe to repeat after a crash half-way: an item is moved only while its
    place in the archive is free, so the files of a later launch are never taken for the
    earlier attempt's. Returns the names moved.
    """
    target = run_dir / f"{ATTEMPT_DIR_PREFIX}{attempt}"
    moves = [
        (rundir.record_dir(run_dir), target / rundir.RECORD_DIRNAME),
        (rundir.progress_path(run_dir), target / rundir.PROGRESS_FILENAME),
        (rundir.log_path(run_dir), target / rundir.LOG_FILENAME),
    ]
    moved = []
    for source, dest in moves:
        if not os.path.lexists(source) or os.path.lexists(dest):
            continue
        target.mkdir(mode=rundir.RUN_DIR_MODE, exist_ok=True)
        os.rename(source, dest)
        moved.append(source.name)
    return moved


class QueueHost(Protocol):
    """What the queue needs of the daemon (the loop hands one down)."""

    @property
    def settings(self) -> Settings:
        """The settings in force (replaced on SIGHUP)."""
        ...

    @property
    def store(self) -> Store:
        """The loop's store."""
        ...

    @property
    def clock(self) -> Clock:
        """The loop's clock."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Where the loop gathers its writes."""
        ...

    def wake(self) -> None:
        """Make the loop look around now (called from the hooks' threads)."""
        ...

    def busy_templates(self) -> dict[str, str]:
        """Run id -> template name of the runs the daemon holds, then of its launches."""
        ...

    def supervises(self, run_id: str) -> bool:
        """True if the run is tracked or launching."""
        ...

    def launching(self, run_id: str) -> bool:
        """True if the run's launch is in flight."""
        ...


class QueueView:
    """The QueueHost the loop hands down: its services, and questions about runs it holds."""

    def __init__(
        self,
        services: Services,
        *,
        busy_templates: Callable[[], dict[str, str]],
        supervises: Callable[[str], bool],
        launching: Callable[[str], bool],
    ) -> None:
        self._s = services
        self.busy_templates = busy_templates
        self.supervises = supervises
        self.launching = launching

    @property
    def settings(self) -> Settings:
        """The settings in force (replaced on SIGHUP)."""
        return self._s.settings

    @property
    def store(self) -> Store:
        """The loop's store."""
        return self._s.store

    @property
    def clock(self) -> Clock:
        """The loop's clock."""
        return self._s.clock

    @property
    def outbox(self) -> Outbox:
        """Where the loop gathers its writes."""
        return self._s.outbox

    def wake(self) -> None:
        """Make the loop look around now."""
        self._s.wake()


class QueueKeeper:
    """The daemon's queue state: pauses seen, the hook cursor, hooks in flight."""

    def __init__(self, host: QueueHost) -> None:
        self._d = host
        self.paused: list[str] = []  # scopes, as last read
        self._next_cycle_check = 0.0
        self._event_cursor: int | None = None  # run_events id up to which finals were hooked
        self._hooks = HookRunner(host.wake)
        self._hooking: set[str] = set()  # hook queued or running, or its end not yet recorded
        self._next_due: float | None = None  # monotonic time of the next not_before
        # What the last pickup walk saw (other programs' commits, the daemon's own status
        # commits, free slots); the same again means no run can have become startable since,
        # and the walk (10 ms with 10,000 waiting rows) is skipped.
        self._walked: tuple[object, ...] | None = None
        self._force_walk = False
        # Dependencies: the run_events id up to which ends were looked at for dependents, and
        # run_dependencies' size, to know when the doomed-dependents query must run again.
        self._dep_cursor: int | None = None
        self._dep_marker: int | None = None

    # -- every database pass ----------------------------------------------------

    def sync(self, *, others: bool = True) -> None:
        """Pauses, doomed dependents and cycles, hooks of runs that reached a final status.

        `others` False: only the daemon's own writes changed the database since the last look,
        and those never change pauses."""
        if others:
            self.paused = [p.scope for p in self._d.store.pauses()]
        now = self._d.clock.monotonic()
        # A not_before passed: this pass's pickup walks the queue whatever else changed; the
        # deadline is spent either way (a full daemon would otherwise wake for it over and
        # over; a slot that frees brings its own pass).
        self._force_walk = self.due(now)
        if self._force_walk:
            self._next_due = None
        if now >= self._next_cycle_check:
            self._next_cycle_check = now + CYCLE_CHECK_INTERVAL_SECONDS
            self._cancel_cycles()
            self._dep_cursor = None  # and a full look at every dependency
        if self._dependencies_changed():
            self._cancel_doomed()
        self._hook_finished_runs()

    def status_parts(self) -> list[str]:
        """For systemd's STATUS=: what is paused."""
        if not self.paused:
            return []
        words = ["everything" if s == QUEUE_ALL else s for s in self.paused]
        return ["paused: " + ", ".join(words)]

    # -- what may start -----------------------------------------------------------

    def pickup(self, free: int, full: frozenset[str] = frozenset()) -> list[RunRecord]:
        """Up to `free` PENDING runs to start now, their earlier attempts' files moved away;
        none of the templates in `full` (their executor has no room now)."""
        if QUEUE_ALL in self.paused:
            self._next_due = None  # resuming is a commit: it brings a pass of its own
            return []
        d = self._d
        skip = set(self.paused) | full
        room = self._template_room()
        skip.update(t for t, left in room.items() if left <= 0)
        # The daemon's own commits count too (status_writes): a released launch claim makes a
        # run startable again and writes no run_events row.
        marker = (d.store.queue_marker(), d.store.status_writes)
        seen = (marker, free, sorted(room.items()), sorted(full), id(d.settings))
        if seen == self._walked and not self._force_walk:
            return []  # nothing that could make a run startable happened since the last walk
        now = d.clock.utcnow()
        records = d.store.pending_runs(free, now=now, skip_templates=skip, room=room)
        self._walked = seen
        self._plan_next_due(now)
        for record in records:
            if (record.attempt or 1) > 1:
                self._archive(record)
        return records

    def _template_room(self) -> dict[str, int]:
        """Free slots of each template with a max_concurrent: its RUNNING runs and the daemon's
        launches in flight count (a run just started may not be RUNNING in the database yet)."""
        d = self._d
        limits = {
            name: t.max_concurrent
            for name, t in d.settings.templates.items()
            if t.max_concurrent is not None
        }
        if not limits:
            return {}
        busy = d.store.running_templates()
        busy.update(d.busy_templates())
        counts: dict[str, int] = {}
        for template in busy.values():
            counts[template] = counts.get(template, 0) + 1
        return {name: limit - counts.get(name, 0) for name, limit in limits.items()}

    def _archive(self, record: RunRecord) -> None:
        # Where the last attempt ran (a cluster executor has a runs_dir of its own).
        if record.run_dir:
            run_dir = Path(record.run_dir)
        else:
            run_dir = rundir.run_dir_for(self._d.settings.runs_dir, record.id)
        previous = (record.attempt or 1) - 1
        try:
            moved = archive_attempt(run_dir, previous)
        except OSError as exc:  # the launch then fails with words about the run directory
            log.error("attempt_archive_failed", run_id=record.id, error=str(exc))
            return
        if moved:
            log.info("attempt_archived", run_id=record.id, attempt=previous, moved=moved)

    def _plan_next_due(self, now: datetime) -> None:
        """Remember when the earliest waiting not_before passes (the loop looks again then)."""
        upcoming = self._d.store.next_not_before(now)
        if upcoming is None:
            self._next_due = None
            return
        seconds = max(0.0, (upcoming - now).total_seconds())
        self._next_due = self._d.clock.monotonic() + seconds

    def next_due(self) -> float | None:
        """Monotonic time of the next not_before to pass, if any run waits for one."""
        return self._next_due

    def due(self, now: float) -> bool:
        """True once a run's not_before has passed since the last pickup."""
        return self._next_due is not None and now >= self._next_due

    # -- dependencies that can never be met ----------------------------------------

    def _dependencies_changed(self) -> bool:
        """True if a run with dependents ended, or dependencies were added, since the last look
        (the first look, and one after each cycle check, look at everything)."""
        store = self._d.store
        marker = store.dependency_marker()
        if self._dep_cursor is None or marker != self._dep_marker:
            self._dep_cursor = store.last_event_id()
            self._dep_marker = marker
            return marker > 0
        ended, self._dep_cursor = store.final_events_since(self._dep_cursor)
        return store.have_dependents(ended)

    def _cancel_doomed(self) -> None:
        """CANCEL runs whose afterok dependency ended without success, or that depend on a run
        that does not exist; round after round, down the chain."""
        for _ in range(MAX_CASCADE_ROUNDS):
            doomed = self._d.store.doomed_dependents()
            if not doomed:
                return
            why: dict[str, str] = {}
            for dep in doomed:
                if dep.run_id not in why:
                    ended = dep.status or "missing: no such run"
                    if dep.status is None:
                        why[dep.run_id] = f"dependency {dep.depends_on} does not exist"
                    else:
                        why[dep.run_id] = f"dependency {dep.depends_on} ended {ended}"
            self._cancel_unstarted(why)

    def _cancel_cycles(self) -> None:
        cycles = find_cycles(self._d.store.pending_dependency_edges())
        if cycles:
            self._cancel_unstarted(
                {run: f"dependency cycle: {words}" for run, words in cycles.items()}
            )

    def _cancel_unstarted(self, why: dict[str, str]) -> None:
        changes = [
            final_change(
                run_id,
                RunStatus.CANCELLED,
                reason=text,
                error_message=text,
                expect=[RunStatus.PENDING],
            )
            for run_id, text in why.items()
            if not self._d.launching(run_id)
        ]
        results = self._d.store.commit_batch(changes)
        for change, applied in zip(changes, results, strict=True):
            if applied:
                log.info("run_cancelled_dependency", run_id=change.run_id, why=change.reason)

    # -- retries ----------------------------------------------------------------------

    def retry_change(self, run_id: str, out: Outcome, reason: str) -> RowChange | None:
        """RUNNING -> PENDING for the run's next attempt, or None when `out` is final.

        An attempt that checkpointed (SPEC section 15) goes on at once, whatever `retry_on`
        and `max_attempts` say; attempts that checkpointed do not count against max_attempts.
        """
        checkpointed = out.kind == CHECKPOINTED
        if not checkpointed and (out.status != RunStatus.FAILED or out.kind is None):
            return None
        d = self._d
        record = d.store.find(run_id)
        # A claim found started after a restart is still PENDING here: its RUNNING change
        # waits in the outbox and is committed before this one (same batch, in order).
        started = record is not None and (
            record.status == RunStatus.RUNNING
            or (record.status == RunStatus.PENDING and record.launch_claimed_at is not None)
        )
        if record is None or not started or record.cancel_requested_at:
            return None
        template = d.settings.templates.get(record.template)
        if checkpointed:
            current = attempt_number(record.attempt)
            log.info("run_checkpointed", run_id=run_id, next_attempt=current + 1)
            words = f"checkpointed: attempt {current} ({reason}); attempt {current + 1} now"
            now = d.clock.utcnow()
            # Not a failure (SPEC 15): the metrics count it nowhere.
            return make_retry_change(
                run_id, attempt=current + 1, not_before=now, reason=words, failed=False
            )
        if template is None or template.max_attempts <= 1:
            return None
        # Attempts that checkpointed are not failures: only the others count.
        failed = attempt_number(record.attempt) - self._checkpoints(run_id, template)
        plan = plan_retry(
            out,
            attempt=failed,
            max_attempts=template.max_attempts,
            retry_on=template.retry_on,
            delay_seconds=template.retry_delay_seconds,
            now=d.clock.utcnow(),
            what=reason,
        )
        if plan is None:
            return None
        next_attempt = attempt_number(record.attempt) + 1
        log.info(
            "run_retry_planned",
            run_id=run_id,
            outcome=out.kind,
            next_attempt=next_attempt,
            delay_seconds=plan.delay_seconds,
        )
        return make_retry_change(
            run_id,
            attempt=next_attempt,
            not_before=plan.not_before,
            reason=plan.reason,
            out_of_memory=out.kind == KIND_OUT_OF_MEMORY,
        )

    def _checkpoints(self, run_id: str, template: Template) -> int:
        """How many of the run's attempts ended checkpointed (their run_events say so)."""
        if template.checkpoint_exit_code is None:
            return 0
        events = self._d.store.events(run_id)
        return sum(1 for e in events if (e.reason or "").startswith(CHECKPOINTED + ":"))

    # -- hooks -------------------------------------------------------------------------

    def _hook_finished_runs(self) -> None:
        d = self._d
        if not self._has_hooks():
            self._event_cursor = None
            return
        if self._event_cursor is None:
            # First look (start, or hooks just configured): the cursor first, then what ended
            # before it and was not hooked; a run seen twice is hooked once (_hooking).
            self._event_cursor = d.store.last_event_id()
            since = d.clock.utcnow() - timedelta(seconds=HOOK_CATCHUP_SECONDS)
            for record in d.store.unhooked_runs(self._hooked_templates(), since):
                self._hook(record)
            return
        run_ids, self._event_cursor = d.store.final_events_since(self._event_cursor)
        for record in d.store.get_many(run_ids):
            self._hook(record)

    def _has_hooks(self) -> bool:
        s = self._d.settings
        return s.hooks.on_finish is not None or any(
            t.on_finish is not None for t in s.templates.values()
        )

    def _hooked_templates(self) -> list[str] | None:
        """Templates whose runs have a hook; None when every run has one (the global hook)."""
        s = self._d.settings
        if s.hooks.on_finish is not None:
            return None
        return [name for name, t in s.templates.items() if t.on_finish is not None]

    def _hook(self, record: RunRecord) -> None:
        d = self._d
        if (
            not record.is_final
            or record.hook_done_at is not None
            or record.id in self._hooking
            or d.supervises(record.id)  # a foreign final over a run we supervise: not ended yet
        ):
            return
        s = d.settings
        template = s.templates.get(record.template)
        argv = s.on_finish_for(template) if template is not None else s.hooks.on_finish
        if argv is None:
            return
        try:
            call = hook_call(
                record,
                argv,
                runs_dir=s.runs_dir,
                config_format=template.config_format if template is not None else "json",
                timeout=s.hooks.timeout_seconds,
            )
        except (KeyError, IndexError, ValueError) as exc:  # the settings check placeholders
            log.error("hook_not_started", run_id=record.id, error=f"bad argument list: {exc}")
            return
        self._hooking.add(record.id)
        self._hooks.submit(call)

    def hooks_pending(self, run_id: str) -> bool:
        """True while the run's hook is queued or running, or its end not yet recorded."""
        return run_id in self._hooking

    def poll_hooks(self) -> None:
        """Record the hooks that ended (hook_done_at, committed with the pass's writes)."""
        for done in self._hooks.done():
            self._d.outbox.add(hook_done_change(done.call.run_id), self._recorded(done.call.run_id))

    def _recorded(self, run_id: str) -> Callable[[bool], None]:
        def forget(_applied: bool) -> None:
            self._hooking.discard(run_id)

        return forget
