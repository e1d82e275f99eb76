"""Store.run_stats and the collector on a real SQLite file: the figures, and hostile rows."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from supervisor.db import Store
from supervisor.heartbeat import Heartbeat
from supervisor.metrics.collector import (
    OTHER_TEMPLATE,
    TIME_BUCKETS_SECONDS,
    CachedCollector,
    CapacityTotals,
    ConfiguredCollector,
    RunsCollector,
    registry_for,
)
from supervisor.settings import load_settings

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert(store: Store, run_id: str, status: str, template: str = "a", **cols: Any) -> None:
    """A row as another program would write it (raw SQL, any values)."""
    values = {
        "id": run_id,
        "status": status,
        "config_json": "{}",
        "template": template,
        "created_at": _stamp(NOW - timedelta(hours=1)),
        **cols,
    }
    names = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    with store.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO runs ({names}) VALUES ({marks})"), values)


def _span(start: datetime, seconds: float) -> dict[str, str]:
    return {"started_at": _stamp(start), "completed_at": _stamp(start + timedelta(seconds=seconds))}


def test_histograms_counters_and_ages_are_counted_in_sql(store: Store) -> None:
    t0 = NOW - timedelta(minutes=50)
    _insert(store, "000000000001", "COMPLETED", **_span(t0, 5))
    _insert(store, "000000000002", "COMPLETED", **_span(t0, 30))
    _insert(
        store, "000000000003", "FAILED", error_message="out of memory: cap 1G", **_span(t0, 7200)
    )
    _insert(store, "000000000004", "FAILED", error_message="exit status 3", **_span(t0, 1))
    _insert(store, "000000000005", "CANCELLED", template="b")  # never started
    _insert(store, "000000000006", "PENDING", created_at=_stamp(NOW - timedelta(seconds=90)))
    _insert(
        store,
        "000000000007",
        "RUNNING",
        started_at=_stamp(NOW - timedelta(seconds=600)),
        progress_updated_at=_stamp(NOW - timedelta(seconds=120)),
        cpus=3,
        gpu_ids="0,1",
        memory_max_bytes=1024,
    )
    # Started, never progressed: its age counts from started_at, and it is the oldest.
    _insert(store, "000000000008", "RUNNING", started_at=_stamp(NOW - timedelta(seconds=700)))
    # Sent to a cluster: holds nothing of this machine.
    _insert(store, "000000000009", "RUNNING", executor="hpc", cpus=64, gpu_ids="7")

    stats = store.run_stats(["a", "b"], OTHER_TEMPLATE, NOW)

    assert stats.status_counts == {
        "COMPLETED": 2,
        "FAILED": 2,
        "CANCELLED": 1,
        "PENDING": 1,
        "RUNNING": 3,
    }
    assert stats.finished == {("a", "COMPLETED"): 2, ("a", "FAILED"): 2, ("b", "CANCELLED"): 1}
    assert stats.out_of_memory == {"a": 1}
    durations = stats.durations["a"]
    at_most = dict(zip(TIME_BUCKETS_SECONDS, durations.cumulative, strict=True))
    assert (at_most[5], at_most[30], at_most[3600], at_most[7200]) == (2, 3, 3, 4)
    assert durations.count == 4
    assert abs(durations.total - (5 + 30 + 7200 + 1)) < 0.01
    assert "b" not in stats.durations  # its run never started
    waits = stats.queue_waits["a"]
    assert waits.count == 4 + 2  # the final ones (600 s each) and the RUNNING ones with a start
    assert abs(stats.oldest_pending_seconds - 90) < 0.01
    assert abs(stats.progress_age_seconds - 700) < 0.01
    assert stats.reserved_cpus == 3
    assert stats.reserved_memory_bytes == 1024
    assert stats.reserved_gpu_ids == {"0", "1"}


def test_empty_database_gives_zeros(store: Store) -> None:
    stats = store.run_stats(["a"], OTHER_TEMPLATE, NOW)
    assert stats.status_counts == {}
    assert stats.durations == {} and stats.queue_waits == {}
    assert stats.oldest_pending_seconds == 0.0 and stats.progress_age_seconds == 0.0
    assert (stats.reserved_cpus, stats.reserved_memory_bytes) == (0, 0)


def test_hostile_rows_fold_into_other_and_garbage_is_left_out(store: Store) -> None:
    for i in range(200):
        _insert(store, f"bad{i:09d}", "FAILED", template=f"t{i}", **_span(NOW, 3))
    _insert(store, "garbage00001", "COMPLETED", started_at="yesterday", completed_at="42")
    _insert(store, "garbage00002", "PENDING", created_at="not a time")
    _insert(store, "garbage00003", "RUNNING", started_at="", cpus="lots", memory_max_bytes=-5)
    _insert(store, "garbage00004", "RUNNING", gpu_ids=",, ,3,3", cpus=-2)
    _insert(store, "garbage00005", "WEIRD")

    stats = store.run_stats(["a"], OTHER_TEMPLATE, NOW)

    assert set(stats.durations) == {OTHER_TEMPLATE}
    assert stats.durations[OTHER_TEMPLATE].count == 200
    assert stats.finished == {(OTHER_TEMPLATE, "FAILED"): 200, ("a", "COMPLETED"): 1}
    assert stats.oldest_pending_seconds == 0.0  # its only PENDING row has no time
    assert stats.progress_age_seconds == 0.0
    assert (stats.reserved_cpus, stats.reserved_memory_bytes) == (0, 0)
    assert stats.reserved_gpu_ids == {"3"}

    collector = RunsCollector(store, ["a"], CapacityTotals(2, 0, 1), store_dir(store) / "none")
    families = list(
        text_string_to_metric_families(generate_latest(registry_for(collector)).decode())
    )
    templates = {
        s.labels["template"] for f in families for s in f.samples if "template" in s.labels
    }
    assert templates == {"a", OTHER_TEMPLATE}
    statuses = {s.labels["status"] for f in families if f.name == "runsup_runs" for s in f.samples}
    assert statuses == {"PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"}


def store_dir(store: Store) -> Path:
    """The folder of the store's database file."""
    database = store.engine.url.database
    assert database is not None
    return Path(database).parent


def test_collector_text_parses_and_reports_heartbeat(store: Store, tmp_path: Path) -> None:
    beat_file = tmp_path / "runs.db.heartbeat"
    collector = RunsCollector(store, ["a"], CapacityTotals(4, 2, 8 << 30), beat_file)
    registry = registry_for(collector)

    def sample(name: str, **labels: str) -> float:
        text_format = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text_format):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        raise AssertionError(f"no sample {name} {labels}")

    assert sample("runsup_daemon_heartbeat_timestamp_seconds") == 0.0
    Heartbeat(beat_file).beat(time.monotonic())
    assert abs(sample("runsup_daemon_heartbeat_timestamp_seconds") - time.time()) < 60
    assert sample("runsup_resource_capacity", resource="gpus") == 2
    assert sample("runsup_resource_capacity", resource="memory_bytes") == 8 << 30
    buckets = [
        sample("runsup_run_duration_seconds_bucket", template="a", le=repr(float(b)))
        for b in TIME_BUCKETS_SECONDS
    ]
    assert buckets == [0.0] * len(TIME_BUCKETS_SECONDS)
    _insert(store, "000000000001", "COMPLETED", **_span(NOW, 2))
    assert sample("runsup_runs_finished_total", template="a", status="COMPLETED") == 1
    assert sample("runsup_run_duration_seconds_bucket", template="a", le="5.0") == 1
    assert sample("runsup_run_duration_seconds_bucket", template="a", le="1.0") == 0


def test_cached_collector_reads_once_per_interval(store: Store, tmp_path: Path) -> None:
    collector = RunsCollector(store, ["a"], CapacityTotals(1, 0, 1), tmp_path / "hb")
    cached = registry_for(CachedCollector(collector, max_age=3600))
    before = generate_latest(cached)
    _insert(store, "000000000001", "PENDING")
    assert generate_latest(cached) == before  # served from the cache
    fresh = registry_for(CachedCollector(collector, max_age=0))
    assert b'runsup_runs{status="PENDING"} 1.0' in generate_latest(fresh)


def test_heartbeat_touches_when_due_and_remakes_a_removed_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db.heartbeat"
    beat = Heartbeat(path, interval=10)
    assert beat.beat(100.0) is True
    first = path.stat().st_mtime_ns
    assert beat.beat(105.0) is False and beat.due == 110.0
    os.utime(path, ns=(first - 10**9, first - 10**9))
    assert beat.beat(110.0) is True
    assert path.stat().st_mtime_ns > first - 10**9
    path.unlink()
    assert beat.beat(120.0) is True and path.exists()
    assert beat.others([path, tmp_path / "runs.db-wal"]) == {tmp_path / "runs.db-wal"}


def test_configured_collector_follows_the_file_and_keeps_the_last_good_one(
    store: Store, tmp_path: Path
) -> None:
    database = store_dir(store) / "runs.db"
    config = tmp_path / "config.toml"
    base = f'database = "{database}"\nruns_dir = "{tmp_path / "runs"}"\n'
    config.write_text(base)
    collector = ConfiguredCollector(store, lambda: load_settings(config, environ={}))
    registry = registry_for(collector)

    def templates() -> set[str]:
        families = text_string_to_metric_families(generate_latest(registry).decode())
        return {s.labels["template"] for f in families for s in f.samples if "template" in s.labels}

    assert templates() == {"erlang-demo"}
    config.write_text(base + '[templates.new]\ncommand = ["/bin/true"]\n')
    assert templates() == {"erlang-demo", "new"}
    config.write_text(base + "[templates.broken\n")  # mid-edit: not TOML
    assert templates() == {"erlang-demo", "new"}
