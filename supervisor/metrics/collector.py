"""Prometheus metrics (SPEC section 14), computed from the database alone.

Everything comes from the database (and the heartbeat file's mtime), so any process that
can read it gets the same figures. The counters and histograms are kept in the database as
runs finish (`run_tallies`, supervisor.db.tallies), so they survive daemon restarts, never go
down (a deleted or pruned row stays counted) and a scrape reads a few hundred rows whatever
the history (bench/history.py; BENCHMARKS.md has the figures). A custom collector reads the
database afresh on each scrape, in one short read transaction of its own store (never the
daemon loop's connection).

Labels are bounded: `status` by the five statuses, `resource` by three names, and `template`
by the configuration: rows naming any other template (a foreign writer may name anything)
are folded, in SQL, into the one label value OTHER_TEMPLATE. No run id is ever a label.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from supervisor.db import TIME_BUCKETS_SECONDS, Histogram, RunStats, Store, utcnow
from supervisor.errors import ConfigError, SupervisorError
from supervisor.heartbeat import heartbeat_path, last_beat
from supervisor.queue.capacity import capacity_of
from supervisor.settings import Settings
from supervisor.states import FINAL_STATUSES, RunStatus

# The label value for every template the configuration does not name.
OTHER_TEMPLATE = "other"
# A textfile written for node_exporter: readable by its user, whoever that is.
TEXTFILE_MODE = 0o644
# The HTTP server reads the database at most this often, however many scrapers ask.
MIN_COLLECT_INTERVAL_SECONDS = 1.0

_FINAL = sorted(s.value for s in FINAL_STATUSES)


@dataclass(frozen=True)
class CapacityTotals:
    """What local runs' reservations may add up to (SPEC section 10), as the metrics count it
    (scheduling.Capacity, which the daemon schedules with, lists the GPU ids)."""

    cpus: int
    gpus: int
    memory_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> CapacityTotals:
        """The capacity the settings give, as the daemon schedules with it (GPUs asked of the
        driver when "auto")."""
        capacity = capacity_of(settings)
        return cls(capacity.cpus, len(capacity.gpu_ids), capacity.memory_bytes)


class RunsCollector(Collector):
    """Yields SPEC section 14's metric families, read from the database on each collect()."""

    def __init__(
        self,
        store: Store,
        templates: Iterable[str],
        capacity: CapacityTotals,
        heartbeat_file: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`templates`: the configured names, the only `template` label values but "other"."""
        self.store = store
        self.templates = sorted(set(templates))
        self.capacity = capacity
        self.heartbeat_file = heartbeat_file
        self.clock = clock

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> RunsCollector:
        """The collector for the database and templates of `settings`."""
        return cls(
            store,
            settings.templates,
            CapacityTotals.of(settings),
            heartbeat_path(settings.database_path, settings.runs_dir),
        )

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Read the database once and yield every family."""
        stats = self.store.run_stats(self.templates, OTHER_TEMPLATE, utcnow())
        yield self._runs(stats)
        yield self._finished(stats)
        yield self._histogram(
            "runsup_run_duration_seconds",
            "Time from started_at to completed_at of runs that reached a final status.",
            stats.durations,
        )
        yield self._histogram(
            "runsup_queue_wait_seconds",
            "Time from created_at to started_at of runs that started.",
            stats.queue_waits,
        )
        yield GaugeMetricFamily(
            "runsup_oldest_pending_seconds",
            "Age of the oldest PENDING run (0 when none waits).",
            value=stats.oldest_pending_seconds,
        )
        yield GaugeMetricFamily(
            "runsup_progress_age_seconds",
            "Longest time a RUNNING run's progress has not moved (since it started if never).",
            value=stats.progress_age_seconds,
        )
        yield from self._resources(stats)
        yield self._out_of_memory(stats)
        beat = last_beat(self.heartbeat_file)
        yield GaugeMetricFamily(
            "runsup_daemon_heartbeat_timestamp_seconds",
            "When the daemon last served, seconds since the epoch (0: never).",
            value=beat if beat is not None else 0.0,
        )

    def _labels(self, seen: Iterable[str]) -> list[str]:
        # Every configured template, at 0 before its first run (so rate() sees the first one).
        return sorted(set(self.templates) | set(seen))

    def _runs(self, stats: RunStats) -> Metric:
        family = GaugeMetricFamily("runsup_runs", "Runs by status.", labels=["status"])
        for status in RunStatus:
            family.add_metric([status.value], stats.status_counts.get(status.value, 0))
        return family

    def _finished(self, stats: RunStats) -> Metric:
        family = CounterMetricFamily(
            "runsup_runs_finished",
            "Runs that reached a final status, by template and status.",
            labels=["template", "status"],
        )
        for template in self._labels(t for t, _ in stats.finished):
            for status in _FINAL:
                family.add_metric([template, status], stats.finished.get((template, status), 0))
        return family

    def _out_of_memory(self, stats: RunStats) -> Metric:
        family = CounterMetricFamily(
            "runsup_out_of_memory",
            "Runs FAILED for passing their memory cap, by template.",
            labels=["template"],
        )
        for template in self._labels(stats.out_of_memory):
            family.add_metric([template], stats.out_of_memory.get(template, 0))
        return family

    def _histogram(self, name: str, doc: str, series: dict[str, Histogram]) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=["template"])
        empty = Histogram((0,) * len(TIME_BUCKETS_SECONDS), 0, 0.0)
        for template in self._labels(series):
            h = series.get(template, empty)
            buckets = [
                (_le(bound), count)
                for bound, count in zip(TIME_BUCKETS_SECONDS, h.cumulative, strict=True)
            ]
            buckets.append(("+Inf", h.count))
            family.add_metric([template], buckets, sum_value=h.total)
        return family

    def _resources(self, stats: RunStats) -> Iterator[Metric]:
        capacity = GaugeMetricFamily(
            "runsup_resource_capacity",
            "What local runs' reservations may add up to ([resources]).",
            labels=["resource"],
        )
        reserved = GaugeMetricFamily(
            "runsup_resource_reserved",
            "What RUNNING local runs hold.",
            labels=["resource"],
        )
        for name, total, held in (
            ("cpus", self.capacity.cpus, stats.reserved_cpus),
            ("gpus", self.capacity.gpus, len(stats.reserved_gpu_ids)),
            ("memory_bytes", self.capacity.memory_bytes, stats.reserved_memory_bytes),
        ):
            capacity.add_metric([name], total)
            reserved.add_metric([name], held)
        yield capacity
        yield reserved


class ConfiguredCollector(Collector):
    """A RunsCollector for the configuration as it is now: read again at each collect(), so
    templates added since the start get their own label; while the file does not parse, the
    last good configuration serves (the daemon itself goes on with its own until SIGHUP)."""

    def __init__(self, store: Store, load: Callable[[], Settings]) -> None:
        """`load` reads the configuration; the first read must succeed (ConfigError if not)."""
        self.store = store
        self.load = load
        self.settings = load()
        # Found again only when [resources] changes: finding GPUs may ask the driver.
        self._capacity = (_capacity_key(self.settings), CapacityTotals.of(self.settings))

    def describe(self) -> Iterable[Metric]:
        """Nothing up front, as RunsCollector."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Read the configuration, then the database."""
        with contextlib.suppress(ConfigError):
            self.settings = self.load()
        key = _capacity_key(self.settings)
        if key != self._capacity[0]:
            self._capacity = (key, CapacityTotals.of(self.settings))
        collector = RunsCollector(
            self.store,
            self.settings.templates,
            self._capacity[1],
            heartbeat_path(self.settings.database_path, self.settings.runs_dir),
        )
        return collector.collect()


class CachedCollector(Collector):
    """Serves one collection to every scrape within `max_age` seconds, one collection at once.

    So a flood of scrapers costs the database (and the machine the daemon shares) one read a
    second at most, however many ask.
    """

    def __init__(self, inner: Collector, max_age: float = MIN_COLLECT_INTERVAL_SECONDS) -> None:
        """Wrap `inner`; nothing is read before the first collect()."""
        self.inner = inner
        self.max_age = max_age
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._taken = float("-inf")

    def describe(self) -> Iterable[Metric]:
        """Nothing up front, as the inner collector."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The last collection if young enough, else a fresh one."""
        with self._lock:
            now = time.monotonic()
            if now - self._taken >= self.max_age:
                self._families = list(self.inner.collect())
                self._taken = now
            return list(self._families)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (1.0, 300.0, ...)."""
    return repr(float(bound))


def registry_for(collector: Collector) -> CollectorRegistry:
    """A registry holding only `collector` (no process or platform metrics of this process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(store: Store, settings: Settings) -> bytes:
    """The Prometheus text format of the database's metrics, read now."""
    return generate_latest(registry_for(RunsCollector.from_settings(store, settings)))


def samples_json(data: bytes) -> list[dict[str, object]]:
    """`runsup metrics --json`: every sample of the text format as {name, labels, value},
    read back with prometheus_client's own parser so the two outputs cannot disagree."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        {"name": sample.name, "labels": dict(sample.labels), "value": sample.value}
        for family in text_string_to_metric_families(data.decode())
        for sample in family.samples
    ]


def write_textfile(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file in the same folder, then a rename).

    node_exporter's textfile collector reads only `*.prom` files: the temporary one ends in
    `.tmp`, so it is never read half-written. SupervisorError, one line, if it cannot be done.
    """
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        why = f"cannot write in {folder}: {exc.strerror}"
        raise SupervisorError(f"--textfile {path}: {why}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), TEXTFILE_MODE)
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SupervisorError(f"--textfile {path}: cannot write it: {exc.strerror}") from None


def _capacity_key(settings: Settings) -> tuple[object, ...]:
    """What the capacity depends on: found again only when this changes."""
    return (settings.resources, settings.max_concurrent_runs)
