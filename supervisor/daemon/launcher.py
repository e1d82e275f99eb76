"""Launches: free slots, the scheduling pass, claims, and launches from begun to reported.
Owns `launching` (launches begun and not yet reported back) and the resources of local runs."""

from __future__ import annotations

import contextlib
import selectors
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import structlog

from supervisor import outcome as outcomes
from supervisor import rundir
from supervisor.daemon import launchprep
from supervisor.daemon.resources import Held, Plan, Resources, Start, running_per_template
from supervisor.daemon.services import Services
from supervisor.daemon.supervision import Supervision
from supervisor.daemon.tracked import InFlight
from supervisor.daemon.wakeups import _LAUNCH, crash_point
from supervisor.db import RunRecord, external_id_change, final_change
from supervisor.errors import LaunchCancelled, LaunchError, SupervisorError
from supervisor.executors.base import Executor, Launch
from supervisor.outcome import Outcome
from supervisor.queue.rules import attempt_number
from supervisor.settings import LOCAL_EXECUTOR
from supervisor.states import RunStatus

log = structlog.get_logger(__name__)

# How far past its free slots a scheduling pass looks down the queue for runs that fit.
SCHEDULING_LOOKAHEAD = 32

# The queue's pickup: up to this many PENDING runs that may start now, in queue order,
# leaving out the runs of these templates (their executor has no room now).
Pickup = Callable[[int, frozenset[str]], list[RunRecord]]
# What the claims found still starting after a restart hold (readopt.py owns them).
ClaimsHeld = Callable[[], Mapping[str, Held]]
# How many of those claims were sent to an executor (they count against its max_submitted).
ClaimsOn = Callable[[str], int]


class Launcher:
    """Starts PENDING runs and follows each launch until it reports its process."""

    def __init__(
        self,
        services: Services,
        supervision: Supervision,
        pickup: Pickup,
        claims_held: ClaimsHeld,
        claims_on: ClaimsOn,
    ) -> None:
        self._s = services
        self._sup = supervision
        self._pickup = pickup
        self._claims_held = claims_held
        self._claims_on = claims_on
        self.resources = Resources(services.settings)
        self.launching: dict[str, InFlight] = {}  # others read it; only this object writes it

    def reload(self) -> None:
        """The settings changed (SIGHUP): take the new capacity."""
        self.resources = Resources(self._s.settings)

    def free_slots(self) -> int:
        """Local runs that may start now (runs on other executors do not count)."""
        runs = self._sup.runs
        busy = sum(r.executor == LOCAL_EXECUTOR for r in runs.values())
        busy += sum(f.executor == LOCAL_EXECUTOR for f in self.launching.values())
        # Claims found still starting after a restart hold a slot, local ones only (readopt).
        return self._s.settings.max_concurrent_runs - busy - len(self._claims_held())

    def _cluster_slots(self) -> dict[str, int]:
        """For each other executor: how many more of its runs may be launched now."""
        free: dict[str, int] = {}
        for name, executor in self._s.executors.items():
            if name == LOCAL_EXECUTOR or executor.max_in_flight is None:
                continue
            busy = sum(r.executor == name for r in self._sup.runs.values())
            busy += sum(f.executor == name for f in self.launching.values())
            busy += self._claims_on(name)  # claims found still submitting after a restart
            free[name] = executor.max_in_flight - busy
        return free

    def launch_pending(self) -> None:
        """Claim and begin launching the PENDING runs that may start now."""
        free = max(0, self.free_slots())
        cluster = self._cluster_slots()
        want = free + sum(max(0, n) for n in cluster.values())
        if want <= 0:
            return
        # Runs of an executor with no room now are not picked up at all: they would fill the
        # rows looked at and hold back the runs of executors that have room (issue 20, 4).
        full = {name for name, n in cluster.items() if n <= 0}
        if free <= 0:
            full.add(LOCAL_EXECUTOR)
        skip = frozenset(
            name for name, t in self._s.settings.templates.items() if t.executor in full
        )
        # First just enough rows to fill the free slots (the common case costs no more); when
        # some of them wait for resources, look a little further down the queue, so that a
        # run that waits never holds back smaller ones behind it (scheduling.py).
        plan = self._plan(want, skip)
        if plan.waiting and plan.examined >= want and len(plan.start) < want:
            plan = self._plan(want + SCHEDULING_LOOKAHEAD, skip)
        for run_id, why in plan.impossible.items():
            self._fail_unstarted_now(run_id, why)
        starts = self._within_executor_limits(plan.start, cluster)
        claimed = set(self._s.store.claim_many([s.claim() for s in starts]))
        for start in starts:
            if start.record.id in claimed:  # else cancelled or taken in the meantime
                crash_point("launch_claimed")
                crash_point(f"launch_claimed:{attempt_number(start.record.attempt)}")
                self._begin_launch(start)

    def _plan(self, limit: int, skip: frozenset[str]) -> Plan:
        """A scheduling pass over the first `limit` PENDING runs in queue order (runs of the
        templates in `skip` left out)."""
        templates = self._s.settings.templates
        candidates = []
        for record in self._pickup(limit, skip):
            problem = launchprep.row_problem(record, templates, self._s.settings.config_file)
            if problem is not None:
                self._fail_unstarted_now(record.id, problem)
            else:
                candidates.append((record, templates[record.template]))
        return self.resources.plan(candidates, self._held(), templates, self._per_template())

    def _within_executor_limits(self, starts: Iterable[Start], free: dict[str, int]) -> list[Start]:
        """The planned starts each executor can take now (max_submitted); a run of an executor
        that is not available fails to start, saying so."""
        kept = []
        for start in starts:
            name = start.template.executor
            if name == LOCAL_EXECUTOR:
                kept.append(start)
            elif name not in self._s.executors:
                why = f"executor {name!r} is not available (see the daemon's log)"
                self._fail_unstarted_now(start.record.id, why)
            elif free.get(name, 0) > 0:
                free[name] -= 1
                kept.append(start)
        return kept

    def _held(self) -> dict[str, Held]:
        """What every local run the loop is responsible for holds (a cluster holds its own)."""
        runs = self._sup.runs
        held = {i: r.held for i, r in runs.items() if r.executor == LOCAL_EXECUTOR}
        held.update((i, f.held) for i, f in self.launching.items() if f.executor == LOCAL_EXECUTOR)
        held.update(self._claims_held())
        return held

    def _per_template(self) -> dict[str, int]:
        names = [run.template_name for run in self._sup.runs.values()]
        names += [f.template.name for f in self.launching.values()]
        return running_per_template(names)

    def busy_templates(self) -> dict[str, str]:
        """Run id -> template name of tracked runs, then of launches in flight (the queue's
        max_concurrent counts them: a run just started may not be RUNNING in the database)."""
        busy = {i: r.template.name for i, r in self._sup.runs.items() if r.template is not None}
        busy.update((i, f.template.name) for i, f in self.launching.items())
        return busy

    def runs_dir(self, executor: str | None) -> Path:
        """Where the runs of this executor have their directories."""
        found = self._s.executors.get(executor or LOCAL_EXECUTOR)
        return (found.runs_dir if found else None) or self._s.settings.runs_dir

    def _begin_launch(self, start: Start) -> None:
        record, template, held = start.record, start.template, start.held
        runs_dir = self.runs_dir(template.executor)
        run_dir = rundir.run_dir_for(runs_dir, record.id)
        try:
            # Claimed just before: a job looked for by name must be younger than this.
            claimed_at = self._s.clock.utcnow()
            spec = launchprep.prepare(record, template, runs_dir, held, claimed_at=claimed_at)
            launch = self._s.executors[template.executor].begin_launch(spec)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.fail_unstarted(record.id, f"cannot prepare run directory {run_dir}: {reason}")
            return
        except SupervisorError as exc:
            self.fail_unstarted(record.id, str(exc))
            return
        crash_point("launch_spawned")
        self._in_flight(
            InFlight(launch, record, template, run_dir, held, None, executor=template.executor)
        )

    def _in_flight(self, flight: InFlight) -> None:
        fd = flight.launch.fileno()
        if fd is not None:
            self._s.selector.register(fd, selectors.EVENT_READ, (_LAUNCH, flight.record.id))
        flight.fd = fd
        self.launching[flight.record.id] = flight
        self._record_external_id(flight)

    def resume(self, record: RunRecord, launch: Launch, run_dir: Path) -> None:
        """Its job is still queued: an in-flight launch again, its id already in the row."""
        template = self._s.settings.templates.get(record.template)
        if template is None:
            launch.abandon()
            self.fail_unstarted(record.id, f"unknown template {record.template!r}")
            return
        self._in_flight(
            InFlight(
                launch,
                record,
                template,
                run_dir,
                Held.of_row(record),
                None,
                executor=record.executor or LOCAL_EXECUTOR,
                external_recorded=record.external_id is not None,
            )
        )
        log.info("launch_resumed", run_id=record.id, external_id=launch.external_id)

    def poll_due_launches(self, now: float) -> None:
        """Ask the launches whose deadline passed how they are doing."""
        for run_id, flight in list(self.launching.items()):
            if now >= flight.launch.deadline:
                self.poll_launch(run_id)

    def poll_launch(self, run_id: str) -> None:
        """Ask the launch how it is doing: failed, still going, or started (then tracked)."""
        flight = self.launching.get(run_id)
        if flight is None:
            return
        try:
            handle = flight.launch.poll()
        except LaunchCancelled as exc:  # a queued job removed on a cancel: it never started
            self._end_launch(flight)
            self._sup.launch_dropped(run_id)
            self._cancel_unstarted(run_id, str(exc))
            return
        except LaunchError as exc:
            self._end_launch(flight)
            self._sup.launch_dropped(run_id)
            self.fail_unstarted(run_id, str(exc))
            return
        self._record_external_id(flight)
        if handle is None:
            return
        self._end_launch(flight)
        self._sup.started(flight, handle)

    def _record_external_id(self, flight: InFlight) -> None:
        """A cluster job's id goes into the row as soon as it exists (before anything relies
        on it: a restarted daemon finds the job by it)."""
        ext = flight.launch.external_id
        if ext is not None and not flight.external_recorded:
            crash_point(f"job_submitted:{attempt_number(flight.record.attempt)}")
            self._s.outbox.add(external_id_change(flight.record.id, ext))
            flight.external_recorded = True
            log.info("run_submitted", run_id=flight.record.id, external_id=ext)

    def _end_launch(self, flight: InFlight) -> None:
        self.launching.pop(flight.record.id, None)
        if flight.fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._s.selector.unregister(flight.fd)

    def cancel(self, run_id: str, why: str) -> None:
        """A cancel for a launch in flight: a queued job is removed and the run CANCELLED;
        otherwise the cancel is acted on as soon as the launch reports."""
        flight = self.launching[run_id]
        if flight.launch.cancel():  # a queued job removed: it never starts
            self._end_launch(flight)
            self._cancel_unstarted(run_id, why)
        else:
            self._sup.cancel_when_started(run_id)

    def cancel_requested(self, record: RunRecord) -> None:
        """Another program asked to cancel this run: the run or its launch is stopped, or an
        unclaimed PENDING row CANCELLED at once."""
        run = self._sup.runs.get(record.id)
        if run is not None:
            if not run.state.cancel_requested:
                self._sup.request_cancel(run)
        elif record.id in self.launching:
            self.cancel(record.id, "cancelled before it started")
        elif (
            record.status == RunStatus.PENDING
            and record.launch_claimed_at is None
            and self._s.store.transition(
                record.id,
                RunStatus.CANCELLED,
                reason="cancelled before start",
                expect=[RunStatus.PENDING],
                values={"error_message": "cancelled before it started"},
            )
        ):
            log.info("run_cancelled_pending", run_id=record.id)

    def poll_executors(self, retired: Iterable[Executor] = ()) -> None:
        """Executors that look at their runs in batches: act on what has news (never waits).
        `retired`: instances a reload replaced, still serving the runs they had."""
        for executor in [*self._s.executors.values(), *retired]:
            if executor.poll_interval is None:
                continue
            for run_id in executor.poll():
                if run_id in self.launching:
                    self.poll_launch(run_id)
                elif run_id in self._sup.runs:
                    self._sup.on_exit(run_id)
                    run = self._sup.runs.get(run_id)
                    if run is not None and run.state.exit is not None:
                        self._sup.check_group(run_id)

    def abandon_all(self) -> None:
        """On the way out: their keepers (or jobs) go on; the next daemon finds the claims."""
        for flight in list(self.launching.values()):
            flight.launch.abandon()
            self._sup.launch_dropped(flight.record.id)
        self.launching.clear()

    def fail_unstarted(self, run_id: str, reason: str) -> None:
        """PENDING -> FAILED (could not start), committed with this pass's other writes."""
        out = outcomes.not_started(reason)
        change = final_change(
            run_id,
            out.status,
            reason=out.reason,
            error_message=out.error_message,
            expect=[RunStatus.PENDING],
        )
        self._s.outbox.add(change)
        log.warning("run_not_started", run_id=run_id, error=reason)

    def _cancel_unstarted(self, run_id: str, why: str) -> None:
        """PENDING -> CANCELLED for a launch stopped before it started (a queued job removed)."""
        change = final_change(
            run_id,
            RunStatus.CANCELLED,
            reason="cancelled before start",
            error_message=why,
            expect=[RunStatus.PENDING],
        )
        out = Outcome(RunStatus.CANCELLED, None, None, why, "cancelled before start")
        self._sup.settle_with(run_id, change, out)

    def _fail_unstarted_now(self, run_id: str, reason: str) -> None:
        """As fail_unstarted, for an unclaimed row: written at once, or the next pass sees it
        PENDING again (if the database is locked, the pass fails and is tried again)."""
        out = outcomes.not_started(reason)
        if self._s.store.commit_batch(
            [
                final_change(
                    run_id,
                    out.status,
                    reason=out.reason,
                    error_message=out.error_message,
                    expect=[RunStatus.PENDING],
                )
            ]
        )[0]:
            log.warning("run_not_started", run_id=run_id, error=reason)
