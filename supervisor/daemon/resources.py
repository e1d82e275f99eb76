"""What local runs hold and may take (SPEC section 10): the loop's side of scheduling.

The rule itself (queue order, a reserving head per kind of wait, backfill) is the pure
`supervisor.queue.scheduling`; this module builds its inputs from the configuration and the runs the
loop holds, and turns its grants into row values, launch parameters and pinned CPUs. What a run
holds is in its row (`cpus`, `gpu_ids`, `memory_max_bytes`) from its claim on, so a restarted
daemon rebuilds it from the rows and never hands one GPU to two runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from supervisor.db import Claim, RunRecord
from supervisor.executors.local import pinning
from supervisor.queue import gpus, scheduling
from supervisor.queue.capacity import capacity_of
from supervisor.queue.scheduling import Grant, Request
from supervisor.settings import LOCAL_EXECUTOR, Settings, Template


@dataclass(frozen=True)
class Held:
    """What one run holds, as its row says it (the form a restart rebuilds from)."""

    cpus: int | None
    gpu_ids: str | None  # comma-separated; None: GPUs not managed for it
    memory_max_bytes: int | None
    cpu_ids: tuple[int, ...] | None = None  # the CPUs it is pinned to

    @classmethod
    def of_row(cls, record: RunRecord) -> Held:
        """What a row says a run holds (another program may have written garbage there)."""
        return cls(record.cpus, record.gpu_ids, record.memory_max_bytes)

    @property
    def gpu_tuple(self) -> tuple[str, ...] | None:
        """The GPU ids as a tuple; None when not managed."""
        return None if self.gpu_ids is None else scheduling.parse_gpu_ids(self.gpu_ids)


@dataclass(frozen=True)
class Start:
    """A run to claim and launch now, with what it is given."""

    record: RunRecord
    template: Template
    held: Held

    def claim(self) -> Claim:
        """The claim that writes what the run holds into its row."""
        return Claim(
            self.record.id,
            executor=self.template.executor,
            cpus=self.held.cpus,
            gpu_ids=self.held.gpu_ids,
            memory_max_bytes=self.held.memory_max_bytes,
        )


@dataclass(frozen=True)
class Plan:
    """One scheduling pass: runs to start now, runs that can never start here."""

    start: tuple[Start, ...]
    impossible: Mapping[str, str]
    waiting: int = 0  # candidates that wait for resources or a limit
    examined: int = 0  # candidates looked at (rows the queue gave)


class Resources:
    """The machine's capacity for local runs, and the scheduling pass over candidates."""

    def __init__(self, settings: Settings) -> None:
        self.capacity = capacity_of(settings)
        self.pin = settings.resources.pin_cpus
        self._allowed = pinning.allowed_cpus()

    def plan(
        self,
        candidates: Sequence[tuple[RunRecord, Template]],
        held: Mapping[str, Held],
        templates: Mapping[str, Template],
        running_per_template: Mapping[str, int],
    ) -> Plan:
        """Which candidates (in queue order) start now, and with what."""
        rebuilt = scheduling.held_from_rows(
            [(i, h.cpus, h.gpu_ids, h.memory_max_bytes) for i, h in held.items()], self.capacity
        )
        local = [(r, t) for r, t in candidates if t.executor == LOCAL_EXECUTOR]
        requests = [
            Request(r.id, t.name, cpus=t.cpus, gpus=t.gpus, memory_bytes=t.memory_max)
            for r, t in local
        ]
        decision = scheduling.decide(
            self.capacity,
            rebuilt.held,
            requests,
            max_concurrent={name: t.max_concurrent for name, t in templates.items()},
            running_per_template=running_per_template,
        )
        by_id = {r.id: (r, t) for r, t in candidates}
        taken = [c for h in held.values() if h.cpu_ids for c in h.cpu_ids]
        starts = []
        for grant in decision.start:
            record, template = by_id[grant.run_id]
            cpu_ids = self._pin(grant, taken)
            starts.append(Start(record, template, _held(grant, cpu_ids)))
        # Runs of other executors are the cluster's to schedule (SPEC section 10).
        starts += [
            Start(r, t, Held(t.cpus, None, t.memory_max))
            for r, t in candidates
            if t.executor != LOCAL_EXECUTOR
        ]
        return Plan(tuple(starts), decision.impossible, len(decision.waiting), len(candidates))

    def held_by_adopted(self, record: RunRecord, keeper_pid: int | None) -> Held:
        """What a run found after a restart holds: its row's counts and, when CPUs are pinned,
        the ids its keeper is pinned to (not in the row: read back from the keeper's affinity,
        so that new runs are not pinned on top of it; issue 20, 11)."""
        held = Held.of_row(record)
        if not self.pin or keeper_pid is None or keeper_pid <= 0:
            return held
        cpus = pinning.pinned_cpus(keeper_pid, self._allowed)
        return replace(held, cpu_ids=tuple(sorted(cpus)) or None)

    def _pin(self, grant: Grant, taken: list[int]) -> tuple[int, ...] | None:
        if not self.pin:
            return None
        chosen = pinning.choose_cpus(self._allowed, taken, grant.cpus)
        if chosen is not None:
            taken.extend(chosen)
        return chosen


def run_env(template: Template, held: Held) -> dict[str, str]:
    """The variables the run's resources set, over its template's env (SPEC section 10)."""
    return gpus.resource_env(
        cpus=held.cpus or scheduling.DEFAULT_CPUS,
        gpu_ids=held.gpu_tuple,
        template_env=template.env,
    )


def _held(grant: Grant, cpu_ids: tuple[int, ...] | None) -> Held:
    return Held(grant.cpus, scheduling.format_gpu_ids(grant.gpu_ids), grant.memory_bytes, cpu_ids)


def running_per_template(templates_of_runs: Iterable[str]) -> dict[str, int]:
    """How many runs of each template the loop holds (for max_concurrent)."""
    counts: dict[str, int] = {}
    for name in templates_of_runs:
        counts[name] = counts.get(name, 0) + 1
    return counts
