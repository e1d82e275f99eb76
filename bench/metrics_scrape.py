"""Time of one metrics scrape on a large table (target: well under a second for 100,000 runs).

Usage: python bench/metrics_scrape.py [--rows N] [--scrapes N]

Fills a temporary database with N final runs (and a few PENDING and RUNNING ones) written
the way the daemon writes them, then times (a) the collection itself, in this process, as
the daemon's HTTP server does it, and (b) the installed `runsup metrics` end to end, as the
systemd timer does it. Prints medians and maxima.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import generate_latest

from supervisor.db import Store
from supervisor.metrics.collector import RunsCollector, registry_for
from supervisor.settings import load_settings

DEFAULT_ROWS = 100_000
DEFAULT_SCRAPES = 9
TEMPLATES = ("a", "b", "c", "d", "e")
LIVE_ROWS = 50  # PENDING and RUNNING rows besides the final ones
RUNSUP = Path(sys.executable).parent / "runsup"
MS = 1000.0
STAMP = "%Y-%m-%d %H:%M:%S.%f"


def fill(db: Path, rows: int) -> None:
    """`rows` final runs over a month, plus LIVE_ROWS waiting or running, in one transaction."""
    Store.open(f"sqlite:///{db}").close()  # the schema, at head
    rng = random.Random(14)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    values = []
    for i in range(rows + LIVE_ROWS):
        created = start + timedelta(seconds=rng.uniform(0, 30 * 86400))
        started = created + timedelta(seconds=rng.expovariate(1 / 600))
        ended = started + timedelta(seconds=rng.expovariate(1 / 7200))
        if i < rows:
            status = rng.choice(("COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "CANCELLED"))
        else:
            status = rng.choice(("PENDING", "RUNNING"))
        live = status in ("PENDING", "RUNNING")
        error = "out of memory: cap 4 GiB" if status == "FAILED" and i % 3 == 0 else None
        values.append(
            (
                f"{i:012x}",
                status,
                "{}",
                rng.choice(TEMPLATES),
                created.strftime(STAMP),
                None if status == "PENDING" else started.strftime(STAMP),
                None if live else ended.strftime(STAMP),
                error,
                1 if status == "RUNNING" else None,
            )
        )
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO runs (id, status, config_json, template, created_at, started_at,"
            " completed_at, error_message, cpus) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
    conn.close()


def main() -> int:
    """Fill, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--scrapes", type=int, default=DEFAULT_SCRAPES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsup-bench-metrics-") as where:
        root = Path(where)
        db = root / "runs.db"
        config = root / "config.toml"
        templates = "".join(f'[templates.{t}]\ncommand = ["/bin/true"]\n' for t in TEMPLATES)
        config.write_text(f'database = "{db}"\nruns_dir = "{root / "runs"}"\n{templates}')
        began = time.perf_counter()
        fill(db, args.rows)
        print(f"filled {args.rows} final runs in {time.perf_counter() - began:.1f} s")

        settings = load_settings(config, environ={})
        store = Store.open(settings.database_url, upgrade=False)
        registry = registry_for(RunsCollector.from_settings(store, settings))
        collect = []
        for _ in range(args.scrapes):
            began = time.perf_counter()
            size = len(generate_latest(registry))
            collect.append(time.perf_counter() - began)
        store.close()

        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
        command = []
        for _ in range(args.scrapes):
            began = time.perf_counter()
            subprocess.run(
                [str(RUNSUP), "--config", str(config), "metrics"],
                check=True,
                stdout=subprocess.DEVNULL,
                env=env,
            )
            command.append(time.perf_counter() - began)
    print(f"rows: {args.rows} final + {LIVE_ROWS} live; scrape text {size} bytes")
    for what, times in (("collection (in process)", collect), ("`runsup metrics`", command)):
        median, worst = statistics.median(times) * MS, max(times) * MS
        print(f"{what:<26} median {median:7.1f} ms   max {worst:7.1f} ms   ({len(times)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
