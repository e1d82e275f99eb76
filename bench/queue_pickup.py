"""Pickup of a free run behind 10,000 waiting ones, and the daemon's cost per database pass.

The queue holds 10,000 PENDING rows that must all wait, each ahead of the free run in queue
order (priority 10 against 0): a third of them paused (their template has a queue_pauses row),
a third waiting for a dependency that never ends, a third with not_before an hour ahead. Then:

- pickup: a free run (template `true`, priority 0) is inserted as another program would, and
  the time until its row leaves PENDING is measured (polled every millisecond), 30 times;
- per-pass CPU: another program commits 50 times, 50 ms apart (each commit makes the daemon
  look at the database: pauses, doomed dependencies, the pickup walk); the daemon's CPU time
  over those commits, divided by 50. The same with an empty queue gives the baseline.

Run: .venv/bin/python bench/queue_pickup.py [--waiting N] [--samples N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import BenchDaemon, cpu_seconds, new_id, now, percentile, sql_time

PRIORITY_WAITING = 10
POLL_SECONDS = 0.001
FOREIGN_COMMITS = 50
FOREIGN_COMMIT_GAP_SECONDS = 0.05
SETTLE_SECONDS = 1.0  # after filling: the daemon's first look at the full queue
MS = 1000.0


def fill(d: BenchDaemon, waiting: int) -> None:
    """`waiting` PENDING rows that must all wait, in one transaction (as another program)."""
    if waiting == 0:
        return
    created = sql_time()
    later = sql_time(datetime.now(UTC) + timedelta(hours=1))
    anchor = new_id()  # a paused run the dependents wait for: it never ends
    rows = [(anchor, "sleep", None)]
    deps = []
    for i in range(waiting):
        run_id = new_id()
        kind = i % 3
        if kind == 0:
            rows.append((run_id, "sleep", None))  # paused template
        elif kind == 1:
            rows.append((run_id, "true", None))
            deps.append((run_id, anchor))
        else:
            rows.append((run_id, "true", later))
    assert d.conn is not None
    d.conn.execute("BEGIN IMMEDIATE")
    d.conn.execute("INSERT INTO queue_pauses (scope, paused_at) VALUES ('sleep', ?)", (created,))
    d.conn.executemany(
        "INSERT INTO runs (id, status, config_json, template, created_at, priority, not_before)"
        " VALUES (?, 'PENDING', '{}', ?, ?, ?, ?)",
        [(r, t, created, PRIORITY_WAITING, nb) for r, t, nb in rows],
    )
    d.conn.executemany(
        "INSERT INTO run_dependencies (run_id, depends_on, kind) VALUES (?, ?, 'afterok')", deps
    )
    d.conn.execute("COMMIT")


def pickup_latencies(d: BenchDaemon, samples: int) -> list[float]:
    """Seconds from the INSERT of a free run to its row leaving PENDING."""
    out = []
    for _ in range(samples):
        [run_id] = d.insert_pending("true")
        t0 = now()
        while d.sql("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0] == "PENDING":
            if now() - t0 > 30:
                raise RuntimeError(f"run {run_id} not picked up in 30 s")
            time.sleep(POLL_SECONDS)
        out.append(now() - t0)
        d.wait("the run to end", lambda r=run_id: _final(d, r), 30)
        time.sleep(0.05)
    return out


def _final(d: BenchDaemon, run_id: str) -> bool:
    status = d.sql("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0]
    return status in ("COMPLETED", "FAILED", "CANCELLED")


def cpu_per_pass(d: BenchDaemon) -> float:
    """The daemon's CPU seconds per database pass brought on by another program's commit."""
    time.sleep(SETTLE_SECONDS)
    before = cpu_seconds(d.pid)
    for i in range(FOREIGN_COMMITS):
        # A commit that changes nothing the queue waits for (a pause's words).
        d.sql(
            "INSERT OR REPLACE INTO queue_pauses (scope, paused_at, reason) VALUES"
            " ('bench-none', ?, ?)",
            (sql_time(), f"commit {i}"),
        )
        time.sleep(FOREIGN_COMMIT_GAP_SECONDS)
    used = cpu_seconds(d.pid) - before
    d.sql("DELETE FROM queue_pauses WHERE scope = 'bench-none'")
    return used / FOREIGN_COMMITS


def measure(root: Path, waiting: int, samples: int) -> tuple[list[float], float]:
    with BenchDaemon(root, max_concurrent=4) as d:
        assert d.conn is not None
        d.conn.isolation_level = None
        fill(d, waiting)
        time.sleep(SETTLE_SECONDS)
        latencies = pickup_latencies(d, samples)
        per_pass = cpu_per_pass(d)
        still = d.sql("SELECT count(*) FROM runs WHERE status = 'PENDING'")[0][0]
        if still != waiting + (1 if waiting else 0):
            raise RuntimeError(f"{still} PENDING rows left, expected {waiting + 1}")
    return latencies, per_pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; waiting rows: {args.waiting}")
    with tempfile.TemporaryDirectory(prefix="runsup-queue-bench-") as tmp:
        for label, waiting in (("empty queue", 0), (f"{args.waiting} waiting", args.waiting)):
            lat, per_pass = measure(Path(tmp) / label.replace(" ", "-"), waiting, args.samples)
            print(
                f"{label:>16}: pickup p50 {statistics.median(lat) * MS:6.1f} ms,"
                f" p95 {percentile(lat, 95) * MS:6.1f} ms, max {max(lat) * MS:6.1f} ms;"
                f" daemon CPU per database pass {per_pass * MS:5.2f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
