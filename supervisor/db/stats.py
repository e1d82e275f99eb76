"""The aggregate queries behind the metrics (SPEC section 14): counted in SQLite, not Python.

One full scan of `runs`, grouped into a few hundred rows at most, and small indexed reads of
the PENDING and RUNNING rows; no run row is ever built in Python. Measured on 100,000 final
runs (bench/metrics_scrape.py, BENCHMARKS.md), and shaped by that:

- one scan gives the counts by status, the finished and out-of-memory counters and both
  histograms, grouped by (template, status, duration bucket, queue-wait bucket): 25 % less
  than one scan per figure, and every figure from the same rows;
- the scan says NOT INDEXED: through an index on status SQLite would fetch each row by a
  lookup, three times slower than reading the table in order;
- each row gets its buckets' indexes once (a CASE), and the counts are made cumulative
  here: a sum of `d <= bound` per bucket costs one aggregate step per bucket per row, four
  times slower;
- julianday() of each timestamp is taken once per row, in a subquery ending in LIMIT -1 so
  that SQLite does not flatten it into the outer query and parse the text again for every
  reference.

SQLite's julianday() reads the stored timestamp text (SPEC section 3) and gives NULL for
anything else, so garbage another program wrote is left out, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from supervisor.db.schema import TIMESTAMP_FORMAT
from supervisor.states import FINAL_STATUSES, RunStatus

SECONDS_PER_DAY = 86400.0
# As the daemon writes it (SPEC section 6): a FAILED run killed for passing its memory cap.
OUT_OF_MEMORY_PREFIX = "out of memory"
LOCAL_EXECUTOR = "local"  # as settings.LOCAL_EXECUTOR (the db layer imports no settings)

_STATUSES = tuple(s.value for s in RunStatus)
_FINAL = tuple(sorted(s.value for s in FINAL_STATUSES))


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
    finished: dict[tuple[str, str], int]  # (template label, final status) -> runs
    out_of_memory: dict[str, int]  # template label -> FAILED runs killed for memory
    durations: dict[str, Histogram]  # template label -> started_at..completed_at, final runs
    queue_waits: dict[str, Histogram]  # template label -> created_at..started_at
    oldest_pending_seconds: float
    progress_age_seconds: float
    reserved_cpus: int
    reserved_memory_bytes: int
    reserved_gpu_ids: frozenset[str]


def read_run_stats(
    conn: Connection, templates: Iterable[str], other: str, bounds: Sequence[float], now: datetime
) -> RunStats:
    """Every figure, on `conn` (one transaction). Templates not in `templates` count as `other`:
    folded in SQL, so a foreign row naming any template adds one label value at most."""
    stamp = now.astimezone(UTC).replace(tzinfo=None).strftime(TIMESTAMP_FORMAT)
    scan = _Scan(len(bounds))
    params = {
        "names": sorted(set(templates)),
        "other": other,
        "statuses": _STATUSES,
        "oom": OUT_OF_MEMORY_PREFIX,
    }
    for row in conn.execute(_scan_query(bounds), params):
        scan.add(*row)
    return RunStats(
        status_counts=scan.status_counts,
        finished=scan.finished,
        out_of_memory=scan.out_of_memory,
        durations=scan.histograms(scan.durations),
        queue_waits=scan.histograms(scan.waits),
        oldest_pending_seconds=_age(conn, "PENDING", "julianday(created_at)", stamp),
        progress_age_seconds=_age(
            conn,
            "RUNNING",
            "coalesce(julianday(progress_updated_at), julianday(started_at))",
            stamp,
        ),
        **_reserved(conn),
    )


def _bucket(column: str, bounds: Sequence[float]) -> str:
    """The index of the first bound `column` is <= (len(bounds): above them all), NULL for NULL."""
    whens = " ".join(f"WHEN {column} <= {float(b)!r} THEN {i}" for i, b in enumerate(bounds))
    return f"CASE WHEN {column} IS NULL THEN NULL {whens} ELSE {len(bounds)} END"


def _scan_query(bounds: Sequence[float]) -> Any:
    final = ", ".join(f"'{s}'" for s in _FINAL)
    day = SECONDS_PER_DAY
    sql = (
        "SELECT t, status, kd, kw, count(*), total(oom), count(d), total(d), count(w), total(w)"
        f" FROM (SELECT *, {_bucket('d', bounds)} AS kd, {_bucket('w', bounds)} AS kw"
        f"  FROM (SELECT t, status, oom,"
        f"   CASE WHEN status IN ({final}) THEN max((e - s) * {day!r}, 0.0) END AS d,"
        f"   max((s - c) * {day!r}, 0.0) AS w"
        "   FROM (SELECT CASE WHEN template IN :names THEN template ELSE :other END AS t,"
        "    status,"
        f"    status = 'FAILED' AND substr(error_message, 1, {len(OUT_OF_MEMORY_PREFIX)}) = :oom"
        "     AS oom,"
        "    julianday(created_at) AS c, julianday(started_at) AS s,"
        "    julianday(completed_at) AS e"
        "    FROM runs NOT INDEXED WHERE status IN :statuses LIMIT -1)"
        "   LIMIT -1)"
        "  LIMIT -1)"
        " GROUP BY t, status, kd, kw"
    )
    return text(sql).bindparams(
        bindparam("names", expanding=True), bindparam("statuses", expanding=True)
    )


class _Scan:
    """Sums the scan's groups into the figures."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.status_counts: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.out_of_memory: dict[str, int] = {}
        self.durations: dict[str, tuple[list[int], list[float]]] = {}
        self.waits: dict[str, tuple[list[int], list[float]]] = {}

    def add(
        self,
        t: str,
        status: str,
        kd: int | None,
        kw: int | None,
        n: int,
        oom: float,
        nd: int,
        sum_d: float,
        nw: int,
        sum_w: float,
    ) -> None:
        """One group: runs of one template label and status, in one bucket of each histogram."""
        self.status_counts[status] = self.status_counts.get(status, 0) + n
        if status in _FINAL:
            self.finished[(t, status)] = self.finished.get((t, status), 0) + n
        if oom:
            self.out_of_memory[t] = self.out_of_memory.get(t, 0) + int(oom)
        for series, k, count, total in (
            (self.durations, kd, nd, sum_d),
            (self.waits, kw, nw, sum_w),
        ):
            if k is not None and count:
                counts, sums = series.setdefault(t, ([0] * (self.buckets + 1), [0.0]))
                counts[k] += count
                sums[0] += total

    @staticmethod
    def histograms(series: dict[str, tuple[list[int], list[float]]]) -> dict[str, Histogram]:
        """Per-bucket counts made cumulative (the last bucket is above every bound)."""
        return {
            t: Histogram(tuple(accumulate(counts[:-1])), sum(counts), sums[0])
            for t, (counts, sums) in series.items()
        }


def _age(conn: Connection, status: str, day: str, now: str) -> float:
    """Seconds since the earliest `day` among rows of `status`; 0 when there is none."""
    query = text(
        f"SELECT (julianday(:now) - min({day})) * {SECONDS_PER_DAY!r} FROM runs"
        " WHERE status = :status"
    )
    value = conn.execute(query, {"now": now, "status": status}).scalar()
    return max(0.0, float(value)) if value is not None else 0.0


def _reserved(conn: Connection) -> dict[str, Any]:
    """What RUNNING local runs hold (SPEC section 10); runs sent to a cluster hold nothing here.
    A foreign row's text or negative number counts as nothing."""
    held = "total(CASE WHEN typeof({0}) = 'integer' THEN max({0}, 0) ELSE 0 END)"
    query = text(
        f"SELECT {held.format('cpus')}, {held.format('memory_max_bytes')}, group_concat(gpu_ids)"
        " FROM runs WHERE status = 'RUNNING' AND coalesce(executor, :local) = :local"
    )
    cpus, memory, gpus = conn.execute(query, {"local": LOCAL_EXECUTOR}).one()
    ids = {g.strip() for g in str(gpus or "").split(",")} - {""}
    return {
        "reserved_cpus": int(cpus),
        "reserved_memory_bytes": int(memory),
        "reserved_gpu_ids": frozenset(ids),
    }
