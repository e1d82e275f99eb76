"""A year of history: what an idle daemon and the commands cost with N finished runs (issue 23).

For each N a database of N finished runs is built (3 run_events each, 10 % with an afterok
dependency on the run before, 80 % COMPLETED, 15 % FAILED, 5 % CANCELLED, one template), the
schema made by `runsup db upgrade` (so the metrics' triggers count every row as it goes in),
the rows written with plain sqlite3 executemany as another program would. Then, with the
installed `runsup daemon` on it:

- DB: the file's size (with its -wal);
- daemon ready: from the start of `runsup daemon` to its `daemon_ready` log line;
- idle CPU: the daemon's share of a core over IDLE_SECONDS with nothing to do;
- pickup median: a PENDING run inserted -> its row leaves PENDING (PICKUP_SAMPLES times);
- CPU per database pass: the daemon's CPU over 50 commits of another program / 50;
- `runsup list` and `runsup metrics`: wall time of the installed command (median of
  CLI_SAMPLES), and the metrics' collection alone, in this process;

and, at the largest N (`--prune`), `runsup db prune` of 90 % of the runs while the daemon runs,
a reader process (short read transactions, as a GUI) and a writer process (a commit every
WRITER_GAP_SECONDS, as a GUI submitting) measure how long each of their transactions waited.

Run: .venv/bin/python bench/history.py [--sizes 10000,100000,1000000] [--prune] [--cache DIR]
(--cache keeps the built databases, 650 MiB at a million runs, for the next run to copy).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import RUNSUP, BenchDaemon, become_subreaper, cpu_share, now
from queue_pickup import cpu_per_pass, pickup_latencies

EVENTS_PER_RUN = 3
DEPENDENT_SHARE = 10  # one run in this many depends on the run before it
CHUNK = 50_000  # rows per executemany transaction while building
IDLE_SECONDS = 5.0
PICKUP_SAMPLES = 20
CLI_SAMPLES = 3
CLI_TIMEOUT_SECONDS = 120.0
SLOW_CLI_SECONDS = 10.0
PRUNE_SHARE = 0.9
WRITER_GAP_SECONDS = 0.02
READER_GAP_SECONDS = 0.005
BASELINE_SECONDS = 30.0
MIB = 1024 * 1024
BASE = datetime(2025, 12, 1, tzinfo=UTC)
STATUSES = ["COMPLETED"] * 16 + ["FAILED"] * 3 + ["CANCELLED"]


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


def build(d: BenchDaemon, n: int) -> None:
    """N finished runs in d.db, schema by `runsup db upgrade`, rows by plain sqlite3."""
    d.db.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(RUNSUP), "--config", str(d.config), "db", "upgrade"], check=True, capture_output=True
    )
    rng = random.Random(n)
    conn = sqlite3.connect(d.db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-200000")
    # A year: run i ended at BASE + i * step, so the oldest 90 % are the first 90 % of rowids.
    step = timedelta(days=365) / n
    # As the daemon leaves its rows: process identity of this boot, run_dir, exit code.
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    prev = None
    for lo in range(0, n, CHUNK):
        runs, events, deps = [], [], []
        for i in range(lo, min(n, lo + CHUNK)):
            run_id = f"{i:012x}"
            ended = BASE + step * i
            ran = timedelta(seconds=rng.uniform(1, 7200))
            started = ended - ran
            created = started - timedelta(seconds=rng.uniform(0, 60))
            status = STATUSES[i % len(STATUSES)]
            c, s, e = _stamp(created), _stamp(started), _stamp(ended)
            pid = 100_000 + i % 300_000
            code = 0 if status == "COMPLETED" else 1
            run_dir = f"{d.runs_dir}/{run_id}"
            runs.append(
                (
                    run_id,
                    status,
                    "{}",
                    "true",
                    c,
                    s,
                    e,
                    1,
                    1,
                    pid,
                    pid,
                    pid - 1,
                    boot,
                    run_dir,
                    code,
                )
            )
            events += [
                (run_id, c, None, "PENDING", "submitted"),
                (run_id, s, "PENDING", "RUNNING", "launched"),
                (run_id, e, "RUNNING", status, "exit"),
            ]
            if prev is not None and i % DEPENDENT_SHARE == 0:
                deps.append((run_id, prev, "afterany"))
            prev = run_id
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO runs (id, status, config_json, template, created_at, started_at,"
            " completed_at, attempt, cpus, pid, pgid, keeper_pid, boot_id, run_dir, exit_code,"
            " pid_start_ticks, keeper_start_ticks, executor)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1, 'local')",
            runs,
        )
        conn.executemany(
            "INSERT INTO run_events (run_id, at, from_status, to_status, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            events,
        )
        conn.executemany(
            "INSERT INTO run_dependencies (run_id, depends_on, kind) VALUES (?, ?, ?)", deps
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def db_mib(d: BenchDaemon) -> float:
    """The database file and its -wal, in MiB."""
    wal = d.db.with_name(d.db.name + "-wal")
    return (d.db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / MIB


def ready_seconds(d: BenchDaemon) -> float:
    """Start the daemon; seconds until its daemon_ready line."""
    t0 = now()
    d.start()  # polls the log every 20 ms; the line's own time is what we want
    for line in d.log_path.read_text().splitlines():
        if "daemon_ready" in line:
            break
    return now() - t0


def cli_seconds(d: BenchDaemon, *args: str) -> float | None:
    """Median wall time of `runsup ARGS` (None: over CLI_TIMEOUT_SECONDS)."""
    times = []
    for _ in range(CLI_SAMPLES):
        t0 = now()
        try:
            subprocess.run(
                [str(RUNSUP), "--config", str(d.config), *args],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=CLI_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            return None
        times.append(now() - t0)
        if times[-1] > SLOW_CLI_SECONDS:  # one sample of a slow command says enough
            break
    return statistics.median(times)


def collect_seconds(d: BenchDaemon) -> float:
    """The metrics' collection alone (the scrape), in this process: median of CLI_SAMPLES."""
    from prometheus_client import generate_latest

    from supervisor.db import Store
    from supervisor.metrics.collector import RunsCollector, registry_for
    from supervisor.settings import load_settings

    settings = load_settings(str(d.config))
    store = Store.open(settings.database_url)
    try:
        registry = registry_for(RunsCollector.from_settings(store, settings))
        times = []
        for _ in range(CLI_SAMPLES):
            t0 = now()
            generate_latest(registry)
            times.append(now() - t0)
    finally:
        store.close()
    return statistics.median(times)


# Another program's short transactions during the prune: each one's wall time, in ms.
_PROBE = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    db, kind, gap, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")  # as runsup's own connections
    waits = []
    import os
    while not os.path.exists(stop):
        t0 = time.monotonic()
        if kind == "writer":
            conn.execute("BEGIN IMMEDIATE")
            waits.append((time.monotonic() - t0) * 1000)  # the wait for the lock
            conn.execute(
                "INSERT OR REPLACE INTO queue_pauses (scope, paused_at, reason)"
                " VALUES ('bench-probe', '2026-01-01 00:00:00.000000', ?)", (str(t0),))
            conn.execute("COMMIT")
        else:
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM runs WHERE status IN ('PENDING', 'RUNNING')")
            conn.execute("SELECT id, status FROM runs ORDER BY rowid DESC LIMIT 20").fetchall()
            conn.execute("COMMIT")
            waits.append((time.monotonic() - t0) * 1000)  # the whole read transaction
        time.sleep(gap)
    print(json.dumps(waits))
    """
)


def _probes(d: BenchDaemon, stop: Path) -> dict[str, subprocess.Popen[str]]:
    """The writer and reader processes, going until `stop` exists."""
    return {
        kind: subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(d.db), kind, str(gap), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for kind, gap in (("writer", WRITER_GAP_SECONDS), ("reader", READER_GAP_SECONDS))
    }


def _waits(probes: dict[str, subprocess.Popen[str]], stop: Path) -> dict[str, list[float]]:
    stop.touch()
    waits = {kind: json.loads(p.communicate(timeout=60)[0]) for kind, p in probes.items()}
    stop.unlink()
    return waits


def prune_figures(d: BenchDaemon, n: int) -> dict[str, float]:
    """`runsup db prune` of the oldest 90 % while a reader and a writer keep going; first the
    same probes for BASELINE_SECONDS without a prune (what the machine alone gives)."""
    cutoff = BASE + timedelta(days=365) / n * int(n * PRUNE_SHARE)
    stop = d.root / "probe.stop"
    probes = _probes(d, stop)
    time.sleep(BASELINE_SECONDS)
    base = _waits(probes, stop)
    probes = _probes(d, stop)
    try:
        t0 = now()
        done = subprocess.run(
            [
                str(RUNSUP),
                "--config",
                str(d.config),
                "db",
                "prune",
                "--json",
                "--ended-before",
                cutoff.isoformat(),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        took = now() - t0
    finally:
        waits = _waits(probes, stop)
    report = json.loads(done.stdout)
    return {
        "baseline_writer_max_ms": max(base["writer"]),
        "baseline_writer_p99_ms": _p99(base["writer"]),
        "baseline_reader_max_ms": max(base["reader"]),
        "runs": report["runs"],
        "seconds": took,
        "writer_max_ms": max(waits["writer"]),
        "writer_p99_ms": _p99(waits["writer"]),
        "writer_n": len(waits["writer"]),
        "reader_max_ms": max(waits["reader"]),
        "reader_n": len(waits["reader"]),
    }


def build_or_copy(d: BenchDaemon, n: int, cache: Path | None) -> float:
    """Build the database of N runs, or copy it from `cache` (built there the first time) and
    bring its schema up to date; seconds it took."""
    t0 = now()
    if cache is None:
        build(d, n)
        return now() - t0
    cached = cache / f"history-{n}.db"
    if not cached.exists():
        builder = BenchDaemon(cache / f"build-{n}", max_concurrent=4)
        build(builder, n)
        builder.db.rename(cached)
    d.db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, d.db)
    subprocess.run(
        [str(RUNSUP), "--config", str(d.config), "db", "upgrade"], check=True, capture_output=True
    )
    return now() - t0


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


def measure(root: Path, n: int, with_prune: bool, cache: Path | None) -> dict[str, object]:
    """Every figure of one row of the table."""
    d = BenchDaemon(root, max_concurrent=4)
    took = build_or_copy(d, n, cache)
    row: dict[str, object] = {"n": n, "build_s": took, "db_mib": db_mib(d)}
    try:
        row["ready_s"] = ready_seconds(d)
        time.sleep(1.0)  # its first passes
        row["idle_cpu"] = cpu_share(d.pid, IDLE_SECONDS)
        assert d.conn is not None
        d.conn.isolation_level = None
        row["pickup_ms"] = statistics.median(pickup_latencies(d, PICKUP_SAMPLES)) * 1000
        row["pass_ms"] = cpu_per_pass(d) * 1000
        row["list_s"] = cli_seconds(d, "list")
        row["metrics_s"] = cli_seconds(d, "metrics")
        row["collect_s"] = collect_seconds(d)
        if with_prune:
            row["prune"] = prune_figures(d, n)
            row["metrics_after_prune_s"] = cli_seconds(d, "metrics")
    finally:
        d.stop()
    return row


def _s(value: object) -> str:
    return f"> {CLI_TIMEOUT_SECONDS:.0f} s" if value is None else f"{float(str(value)):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--prune", action="store_true", help="prune 90 %% at the largest N")
    parser.add_argument("--keep", default=None, help="build in DIR and leave it there")
    parser.add_argument(
        "--cache", default=None, help="keep each built database in DIR and copy it from there"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    become_subreaper()
    load = os.getloadavg()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores,"
        f" load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="runsup-history-", dir=args.keep) as tmp:
        for n in sizes:
            cache = Path(args.cache) if args.cache else None
            row = measure(Path(tmp) / f"n{n}", n, args.prune and n == max(sizes), cache)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        "| N | DB | daemon ready | idle CPU | pickup median | CPU per database pass"
        " | `runsup list` | `runsup metrics` | metrics collection |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {float(str(r['db_mib'])):.0f} MiB | {_s(r['ready_s'])}"
            f" | {float(str(r['idle_cpu'])) * 100:.1f} % | {float(str(r['pickup_ms'])):.0f} ms"
            f" | {float(str(r['pass_ms'])):.1f} ms | {_s(r['list_s'])} | {_s(r['metrics_s'])}"
            f" | {float(str(r['collect_s'])) * 1000:.1f} ms |"
        )
    for r in rows:
        p = r.get("prune")
        if isinstance(p, dict):
            print(
                f"\nprune of {p['runs']:,} runs of {r['n']:,}: {p['seconds']:.1f} s;"
                f" writer waited at most {p['writer_max_ms']:.1f} ms"
                f" (p99 {p['writer_p99_ms']:.1f} ms, {p['writer_n']} commits),"
                f" reader at most {p['reader_max_ms']:.1f} ms ({p['reader_n']} reads);"
                f" without a prune ({BASELINE_SECONDS:.0f} s before): writer at most"
                f" {p['baseline_writer_max_ms']:.1f} ms (p99 {p['baseline_writer_p99_ms']:.1f}),"
                f" reader at most {p['baseline_reader_max_ms']:.1f} ms;"
                f" `runsup metrics` after: {_s(r['metrics_after_prune_s'])}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
