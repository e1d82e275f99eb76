"""RunRecord reads the SPEC section 9-11 columns as other programs write them; only SQLite opens."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.db import Store
from supervisor.errors import DatabaseError


def insert(db_path: Path, sql: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def test_queue_and_resource_columns_read_back(store: Store, db_path: Path) -> None:
    insert(
        db_path,
        "INSERT INTO runs (id, status, config_json, template, created_at, priority, not_before,"
        " attempt, sweep_id, executor, external_id, host, cpus, gpu_ids, memory_max_bytes,"
        " peak_memory_bytes, hook_done_at)"
        " VALUES ('bbbbbbbbbbbb', 'PENDING', '{}', 'erlang-demo', '2025-01-02 03:04:05.000000',"
        " -3, '2025-01-02 04:00:00.000000', 2, 'cccccccccccc', 'cluster', '4242_1', 'node07',"
        " 4, '0,1', 8589934592, 1234567, '2025-01-02 05:00:00.000000')",
    )
    record = store.get("bbbbbbbbbbbb")
    assert (record.priority, record.attempt, record.cpus) == (-3, 2, 4)
    assert record.not_before == datetime(2025, 1, 2, 4, tzinfo=UTC)
    assert record.hook_done_at == datetime(2025, 1, 2, 5, tzinfo=UTC)
    assert (record.sweep_id, record.executor, record.external_id) == (
        "cccccccccccc",
        "cluster",
        "4242_1",
    )
    assert (record.host, record.gpu_ids) == ("node07", "0,1")
    assert (record.memory_max_bytes, record.peak_memory_bytes) == (8589934592, 1234567)
    assert record.to_json()["not_before"] == "2025-01-02T04:00:00+00:00"


def test_garbage_in_the_new_columns_reads_as_none(store: Store, db_path: Path) -> None:
    insert(
        db_path,
        "INSERT INTO runs (id, status, config_json, template, created_at, priority, not_before,"
        " cpus, memory_max_bytes, external_id)"
        " VALUES ('dddddddddddd', 'PENDING', '{}', 'erlang-demo', '2025-01-02 03:04:05.000000',"
        " 'high', 'tomorrow', x'00ff', 'lots', 4242)",
    )
    record = store.get("dddddddddddd")
    assert (record.priority, record.not_before, record.cpus, record.memory_max_bytes) == (
        None,
        None,
        None,
        None,
    )
    assert record.external_id == "4242"


@pytest.mark.parametrize("url", ["postgresql://u@db/runs", "mysql://x/y", "not a url"])
def test_only_sqlite_opens(url: str) -> None:
    with pytest.raises(DatabaseError, match="only SQLite"):
        Store.open(url)
