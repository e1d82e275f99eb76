"""The figures behind the metrics (SPEC section 14), read in one short transaction.

Counters and histograms come from `run_tallies` (supervisor.db.tallies), kept by triggers as
runs finish: a few hundred rows, whatever the history. What only the active rows say (the
oldest PENDING run, the stalest RUNNING one, what RUNNING runs hold) is read through the
status index, so it costs what is PENDING and RUNNING, never what has ended.

SQLite's julianday() reads the stored timestamp text (SPEC section 3) and gives NULL for
anything else, so garbage another program wrote is left out, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from supervisor.db import tallies
from supervisor.db.stamps import TIMESTAMP_FORMAT
from supervisor.db.tallies import Rows
from supervisor.states import FINAL_STATUSES, RunStatus

SECONDS_PER_DAY = 86400.0
LOCAL_EXECUTOR = "local"  # as settings.LOCAL_EXECUTOR (the db layer imports no settings)

_STATUSES = frozenset(s.value for s in RunStatus)
_FINAL = frozenset(s.value for s in FINAL_STATUSES)


@dataclass(frozen=True)
class Histogram:
    """One histogram series: cumulative counts of values <= each bound, their count and sum."""

    cumulative: tuple[int, ...]  # one per bound, in the bounds' order
    count: int
    total: float


@dataclass(frozen=True)
class RunStats:
    """What the metrics are made of, read in one transaction."""

    status_counts: dict[str, int]  # the five statuses only
    finished: dict[tuple[str, str], int]  # (template label, final status) -> attempts ended
    out_of_memory: dict[str, int]  # template label -> FAILED runs killed for memory
    durations: dict[str, Histogram]  # template label -> started_at..completed_at of each end
    queue_waits: dict[str, Histogram]  # template label -> created_at..started_at of each start
    oldest_pending_seconds: float
    progress_age_seconds: float
    reserved_cpus: int
    reserved_memory_bytes: int
    reserved_gpu_ids: frozenset[str]


def read_run_stats(rows: Rows, templates: Iterable[str], other: str, now: datetime) -> RunStats:
    """Every figure, read through `rows` (one transaction; no SQLAlchemy here, so that
    supervisor.db.quickread can read them with plain sqlite3). Templates not in `templates`
    count as `other`, so a foreign row naming any template adds one label value at most.
    Histograms have the buckets of tallies.TIME_BUCKETS_SECONDS."""
    stamp = now.astimezone(UTC).replace(tzinfo=None).strftime(TIMESTAMP_FORMAT)
    named = set(templates)
    fold = _Fold(len(tallies.TIME_BUCKETS_SECONDS))
    for row in tallies.read_tallies(rows):
        fold.add(row, row.template if row.template in named else other)
    return RunStats(
        status_counts=fold.status_counts,
        finished=fold.finished,
        out_of_memory=fold.out_of_memory,
        durations=fold.histograms(fold.durations),
        queue_waits=fold.histograms(fold.waits),
        oldest_pending_seconds=_age(rows, "PENDING", "julianday(created_at)", stamp),
        progress_age_seconds=_age(
            rows,
            "RUNNING",
            "coalesce(julianday(progress_updated_at), julianday(started_at))",
            stamp,
        ),
        **_reserved(rows),
    )


class _Fold:
    """Sums tally rows into the figures, by template label."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.status_counts: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.out_of_memory: dict[str, int] = {}
        self.durations: dict[str, tuple[list[int], list[float]]] = {}
        self.waits: dict[str, tuple[list[int], list[float]]] = {}

    def add(self, row: tallies.Tally, label: str) -> None:
        """One tally row, under its template label."""
        if row.metric == tallies.RUNS:
            if row.status in _STATUSES and row.count > 0:
                self.status_counts[row.status] = row.count
        elif row.metric == tallies.FINISHED:
            if row.status in _FINAL:
                key = (label, row.status)
                self.finished[key] = self.finished.get(key, 0) + row.count
        elif row.metric == tallies.OUT_OF_MEMORY:
            self.out_of_memory[label] = self.out_of_memory.get(label, 0) + row.count
        elif row.metric in (tallies.DURATION, tallies.QUEUE_WAIT) and row.bucket >= 0:
            series = self.durations if row.metric == tallies.DURATION else self.waits
            counts, sums = series.setdefault(label, ([0] * (self.buckets + 1), [0.0]))
            counts[min(row.bucket, self.buckets)] += row.count
            sums[0] += row.total

    @staticmethod
    def histograms(series: dict[str, tuple[list[int], list[float]]]) -> dict[str, Histogram]:
        """Per-bucket counts made cumulative (the last bucket is above every bound)."""
        return {
            t: Histogram(tuple(accumulate(counts[:-1])), sum(counts), sums[0])
            for t, (counts, sums) in series.items()
        }


def _age(rows: Rows, status: str, day: str, now: str) -> float:
    """Seconds since the earliest `day` among rows of `status`; 0 when there is none."""
    query = (
        f"SELECT (julianday(:now) - min({day})) * {SECONDS_PER_DAY!r} FROM runs"
        " WHERE status = :status"
    )
    value = rows(query, {"now": now, "status": status})[0][0]
    return max(0.0, float(value)) if value is not None else 0.0


def _reserved(rows: Rows) -> dict[str, Any]:
    """What RUNNING local runs hold (SPEC section 10); runs sent to a cluster hold nothing here.
    A foreign row's text or negative number counts as nothing."""
    held = "total(CASE WHEN typeof({0}) = 'integer' THEN max({0}, 0) ELSE 0 END)"
    query = (
        f"SELECT {held.format('cpus')}, {held.format('memory_max_bytes')}, group_concat(gpu_ids)"
        " FROM runs WHERE status = 'RUNNING' AND coalesce(executor, :local) = :local"
    )
    cpus, memory, gpus = rows(query, {"local": LOCAL_EXECUTOR})[0]
    ids = {g.strip() for g in str(gpus or "").split(",")} - {""}
    return {
        "reserved_cpus": int(cpus),
        "reserved_memory_bytes": int(memory),
        "reserved_gpu_ids": frozenset(ids),
    }
