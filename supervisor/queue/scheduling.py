"""Which pending local runs start now, and which GPUs each gets (SPEC sections 10 and 11).

Pure logic: no database, no processes, no clock. The daemon gives the capacity (`[resources]`
and `max_concurrent_runs`), what RUNNING runs hold (rebuilt from their rows after a restart by
`held_from_rows`), and the startable PENDING runs in queue order (highest priority first, then
oldest); `decide` says which to start with what, which wait and why, and which can never start.

The rule: queue order, with reservations for the head of each wait.

1. Runs are taken in queue order; a run that fits in what is free (and is allowed by
   `max_concurrent_runs` and its template's `max_concurrent`) starts and takes what it asked.
2. The first run that does not fit reserves capacity, and later runs may only use what is left
   beyond the reservation. There are two kinds of head, one of each at most:
   - the first run short of GPUs reserves the free GPUs (up to its need), and nothing else:
     a run that waits for a GPU never holds back a run that needs none;
   - the first run that has its GPUs but is short of CPUs or memory reserves the free CPUs and
     memory up to its need, and its GPUs.
3. A run that asks for more than the machine has (CPUs, GPUs or memory over `[resources]`) can
   never start: it is listed in `Decision.impossible` for the daemon to fail.

Why this rule. Without run-time estimates (`timeout_seconds` is a limit, not a forecast) the
classic EASY backfill test, "a smaller job may jump ahead only if it ends before the blocked
job's reserved start time", cannot be made. Reserving capacity instead of time keeps its
guarantee: what the head of a wait needs is never given to a later run, so everything freed
goes to the head until it fits, and the head starts at the latest when the runs that held its
resources when it became the head have ended, however many small runs arrive meanwhile (no
starvation). A run becomes the head of its wait once no run ahead of it in the queue waits for
the same thing; new arrivals queue behind it unless given a higher priority (which is what
priority is for). Runs behind the head still fill whatever it cannot use (backfill), so a big
run waiting does not idle the whole machine. GPUs get their own head because the two waits
differ: a run waiting for a GPU holds back only GPU runs. Once it has its GPUs it waits for
CPUs and memory like any other head, holding its GPUs so another GPU run cannot take them.
Reservations are recomputed on every call from the queue order, so a restart or a change of
priority changes them at once and nothing about them needs storing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# A NULL `cpus` on a RUNNING row (a run from before resources existed, or started by another
# program) counts as the template default.
DEFAULT_CPUS = 1
_GPU_ID_SEPARATORS = re.compile(r"[,\s;]+")

WAIT_MAX_RUNS = "max_concurrent_runs reached"
WAIT_TEMPLATE = "its template's max_concurrent reached"
WAIT_GPUS = "waiting for GPUs"
WAIT_CPUS_MEMORY = "waiting for CPUs or memory"
WAIT_BEHIND = "a run ahead of it in the queue holds a reservation"


@dataclass(frozen=True)
class Capacity:
    """What local runs may use together."""

    cpus: int
    gpu_ids: tuple[str, ...]
    memory_bytes: int
    max_runs: int | None = None  # max_concurrent_runs


@dataclass(frozen=True)
class Holding:
    """What one RUNNING run holds."""

    run_id: str
    cpus: int
    gpu_ids: tuple[str, ...] = ()
    memory_bytes: int = 0


@dataclass(frozen=True)
class Request:
    """What one PENDING run asks for."""

    run_id: str
    template: str
    cpus: int = DEFAULT_CPUS
    gpus: int | None = None  # None: GPUs not managed for it; 0 hides them all
    memory_bytes: int | None = None  # its memory_max: a cap, and a reservation

    @property
    def gpu_count(self) -> int:
        """How many GPUs it takes."""
        return self.gpus or 0


@dataclass(frozen=True)
class Grant:
    """A run to start now and what it holds: write these to its row."""

    run_id: str
    cpus: int
    gpu_ids: tuple[str, ...] | None  # None: not managed (env untouched); () for gpus = 0
    memory_bytes: int | None


@dataclass(frozen=True)
class Decision:
    """The outcome of one scheduling pass."""

    start: tuple[Grant, ...]
    impossible: Mapping[str, str]  # run id -> why it can never start here (fail it)
    waiting: Mapping[str, str]  # run id -> why it waits (for logs and `runsup show`)


@dataclass
class _Pool:
    """What is still free during one pass (after holdings, starts and reservations)."""

    cpus: int
    memory: int
    gpus: list[str]
    runs: int
    per_template: dict[str, int]
    gpu_head: bool = False
    cpu_head: bool = False
    started: list[Grant] = field(default_factory=list)

    def take(self, request: Request) -> Grant:
        gpu_ids = tuple(self.gpus[: request.gpu_count])
        del self.gpus[: request.gpu_count]
        self.cpus -= request.cpus
        self.memory -= request.memory_bytes or 0
        self.runs += 1
        self.per_template[request.template] = self.per_template.get(request.template, 0) + 1
        managed = gpu_ids if request.gpus is not None else None
        grant = Grant(request.run_id, request.cpus, managed, request.memory_bytes)
        self.started.append(grant)
        return grant

    def reserve_for_cpu_head(self, request: Request) -> None:
        self.cpus -= max(0, min(request.cpus, self.cpus))
        self.memory -= max(0, min(request.memory_bytes or 0, self.memory))
        del self.gpus[: request.gpu_count]


def too_big(request: Request, capacity: Capacity) -> str | None:
    """Why `request` can never start under `capacity`, or None if it could."""
    if request.cpus > capacity.cpus:
        return f"asks for {request.cpus} CPUs but [resources] cpus is {capacity.cpus}"
    if request.gpu_count > len(capacity.gpu_ids):
        return f"asks for {request.gpu_count} GPUs but this machine has {len(capacity.gpu_ids)}"
    if (request.memory_bytes or 0) > capacity.memory_bytes:
        return (
            f"asks for memory_max {request.memory_bytes} bytes but [resources] memory is "
            f"{capacity.memory_bytes} bytes"
        )
    return None


def _new_pool(
    capacity: Capacity, held: Sequence[Holding], running_per_template: Mapping[str, int]
) -> _Pool:
    held_gpus = {gpu for holding in held for gpu in holding.gpu_ids}
    return _Pool(
        cpus=capacity.cpus - sum(h.cpus for h in held),
        memory=capacity.memory_bytes - sum(h.memory_bytes for h in held),
        gpus=[gpu for gpu in capacity.gpu_ids if gpu not in held_gpus],
        runs=len(held),
        per_template=dict(running_per_template),
    )


def _why_waits(
    request: Request, pool: _Pool, capacity: Capacity, max_concurrent: Mapping[str, int | None]
) -> str | None:
    """Why `request` cannot start in `pool` now (None: it can), reserving for a new head."""
    if capacity.max_runs is not None and pool.runs >= capacity.max_runs:
        return WAIT_MAX_RUNS
    limit = max_concurrent.get(request.template)
    if limit is not None and pool.per_template.get(request.template, 0) >= limit:
        return WAIT_TEMPLATE
    if request.gpu_count > len(pool.gpus):
        if pool.gpu_head:
            return WAIT_BEHIND
        pool.gpu_head = True
        pool.gpus.clear()  # it is short: every free GPU is less than it needs
        return WAIT_GPUS
    if request.cpus > pool.cpus or (request.memory_bytes or 0) > pool.memory:
        if pool.cpu_head:
            return WAIT_BEHIND
        pool.cpu_head = True
        pool.reserve_for_cpu_head(request)
        return WAIT_CPUS_MEMORY
    return None


def decide(
    capacity: Capacity,
    held: Sequence[Holding],
    candidates: Sequence[Request],
    *,
    max_concurrent: Mapping[str, int | None] | None = None,
    running_per_template: Mapping[str, int] | None = None,
) -> Decision:
    """Which of `candidates` (in queue order) start now, with which GPUs; see the module doc."""
    pool = _new_pool(capacity, held, running_per_template or {})
    limits = max_concurrent or {}
    impossible: dict[str, str] = {}
    waiting: dict[str, str] = {}
    for request in candidates:
        reason = too_big(request, capacity)
        if reason is not None:
            impossible[request.run_id] = reason
            continue
        wait = _why_waits(request, pool, capacity, limits)
        if wait is None:
            pool.take(request)
        else:
            waiting[request.run_id] = wait
    return Decision(tuple(pool.started), impossible, waiting)


# -- rows ---------------------------------------------------------------------------------------


def format_gpu_ids(gpu_ids: Sequence[str] | None) -> str | None:
    """A row's `gpu_ids` text: comma-separated as in CUDA_VISIBLE_DEVICES; NULL if unmanaged."""
    return None if gpu_ids is None else ",".join(gpu_ids)


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """The ids in a `gpu_ids` text; also takes spaces or semicolons that other programs write."""
    return tuple(token for token in _GPU_ID_SEPARATORS.split(text) if token)


@dataclass(frozen=True)
class Rebuilt:
    """What RUNNING rows hold, and what in them could not be taken as written."""

    held: tuple[Holding, ...]
    problems: tuple[str, ...]  # one sentence each, for the log


def _count(value: object, default: int, what: str, run_id: str, problems: list[str]) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    problems.append(f"run {run_id}: {what} {value!r} is not a count; taken as {default}")
    return default


def _gpus_of_row(
    run_id: str, text: object, known: set[str], owner: dict[str, str], problems: list[str]
) -> tuple[str, ...]:
    if text is None:
        return ()
    if not isinstance(text, str):
        problems.append(f"run {run_id}: gpu_ids {text!r} is not text; ignored")
        return ()
    mine: list[str] = []
    for gpu in parse_gpu_ids(text):
        if gpu not in known:
            problems.append(f"run {run_id}: gpu_ids names {gpu!r}, not one of this machine's")
        elif gpu in owner:
            if owner[gpu] != run_id:
                problems.append(f"GPU {gpu} is recorded for both run {owner[gpu]} and {run_id}")
        else:
            owner[gpu] = run_id
            mine.append(gpu)
    return tuple(mine)


def held_from_rows(
    rows: Iterable[tuple[str, object, object, object]], capacity: Capacity
) -> Rebuilt:
    """What RUNNING rows `(id, cpus, gpu_ids, memory_max_bytes)` hold, after a daemon restart.

    Values are taken defensively (other programs write rows too): a NULL or garbage count is
    the default, a GPU id this machine does not have is ignored, and a GPU recorded for two
    runs is held once, so no new run is ever given it while either lives.
    """
    known = set(capacity.gpu_ids)
    owner: dict[str, str] = {}
    problems: list[str] = []
    held: list[Holding] = []
    for run_id, cpus, gpu_text, memory in rows:
        held.append(
            Holding(
                run_id=run_id,
                cpus=_count(cpus, DEFAULT_CPUS, "cpus", run_id, problems),
                gpu_ids=_gpus_of_row(run_id, gpu_text, known, owner, problems),
                memory_bytes=_count(memory, 0, "memory_max_bytes", run_id, problems),
            )
        )
    return Rebuilt(tuple(held), tuple(problems))
