"""`runsup results` and `runsup list` on a big database, and how soon the client's wait()
returns after the daemon's final commit.

Usage: python bench/client.py [--runs 100000] [--sweep 1000] [--repeat 5] [--waits 100]
       [--keep DIR] [--check]

1. Makes a database of `--runs` runs as a year of use leaves it (written with sqlite3, as any
   program could): almost all final, a few dozen PENDING and RUNNING, one sweep of `--sweep`
   runs and the newest hundred with a results.json each.
2. Times the installed `runsup` (wall clock, median of `--repeat`): `list`, `results`
   (the 20 newest), `results --sweep` of the big sweep (and, once, `list --all`).
3. Starts a real daemon on a small database of its own and, `--waits` times, submits a run of
   a command that exits at once and calls Run.wait(): the latency is the moment wait()
   returned less the run's completed_at (set by the daemon just before it commits, so the
   figure is the commit-to-return time plus the daemon's own time from completed_at to its
   commit: an upper bound). Also the CPU a waiting client spends (its polling).
Targets: results and list under 0.5 s; wait() within 250 ms of the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lib import RUNSUP, become_subreaper, connect, new_id, percentile, print_median, reap_orphans

from supervisor.client import WAIT_POLL_SECONDS, Client
from supervisor.db import Store

TARGET_SECONDS = 0.5
WAIT_TARGET_SECONDS = 0.25
ACTIVE_RUNS = 40
WITH_RESULTS = 100
BATCH = 10_000
DAEMON_READY_SECONDS = 30.0
IDLE_WAIT_SECONDS = 3.0


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def make_database(root: Path, runs: int, sweep_size: int) -> tuple[Path, str]:
    """The config file of a database of `runs` runs, and the id of its big sweep."""
    db = root / "runs.db"
    runs_dir = root / "runs"
    config = root / "config.toml"
    config.write_text(
        f"database = {json.dumps(str(db))}\nruns_dir = {json.dumps(str(runs_dir))}\n"
        "[templates.sim]\ncommand = ['/bin/true']\n"
    )
    Store.open(f"sqlite:///{db}").close()  # the schema, as runsup makes it
    sweep_id = new_id()
    rng = random.Random(1)
    start = datetime(2025, 12, 1, tzinfo=UTC)
    conn = connect(db)
    rows = []
    for i in range(runs):
        created = start + timedelta(seconds=300 * i)
        in_sweep = i >= runs - sweep_size - ACTIVE_RUNS and i < runs - ACTIVE_RUNS
        status = "COMPLETED" if rng.random() < 0.9 else "FAILED"
        if i >= runs - ACTIVE_RUNS:
            status = "PENDING" if i % 2 else "RUNNING"
        run_id = new_id()
        final = status in ("COMPLETED", "FAILED")
        run_dir = runs_dir / run_id
        has_results = status == "COMPLETED" and (in_sweep or i >= runs - WITH_RESULTS - ACTIVE_RUNS)
        if has_results:
            run_dir.mkdir(parents=True)
            (run_dir / "results.json").write_text(
                json.dumps({"blocking": rng.random(), "stats": {"calls": i, "lost": i % 7}})
            )
        config_json = {"load": i % 50, "seed": i % 3, "channels": 10}
        rows.append(
            (
                run_id,
                f"run {i}",
                status,
                json.dumps(config_json),
                "sim",
                stamp(created),
                stamp(created + timedelta(seconds=5)) if status != "PENDING" else None,
                stamp(created + timedelta(seconds=65)) if final else None,
                str(run_dir) if status != "PENDING" else None,
                1 if status != "PENDING" else None,
                sweep_id if in_sweep else None,
            )
        )
        if len(rows) == BATCH:
            _insert(conn, rows)
            rows = []
    _insert(conn, rows)
    conn.close()
    return config, sweep_id


def _insert(conn: object, rows: list[tuple[object, ...]]) -> None:
    conn.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
    conn.executemany(  # type: ignore[attr-defined]
        "INSERT INTO runs (id, name, status, config_json, template, created_at, started_at,"
        " completed_at, run_dir, attempt, sweep_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")  # type: ignore[attr-defined]


def time_command(config: Path, args: list[str], repeat: int) -> tuple[list[float], str]:
    """Wall times of `runsup --config CONFIG ARGS`, and its last output; remembers the CPU
    time (user + system) of each in CPU_TIMES: on a machine shared with other work, the wall
    time also counts the waits for a core, the CPU time is what an idle core would take."""
    times = []
    CPU_TIMES.clear()
    out = ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [str(RUNSUP), "--config", str(config), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU_TIMES.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        out = done.stdout
    return times, out


CPU_TIMES: list[float] = []


def report(label: str, times: list[float], check: bool) -> int:
    """The wall-time median against the target, and the CPU time beside it."""
    missed = print_median(label, times, TARGET_SECONDS, check)
    cpu = statistics.median(CPU_TIMES)
    verdict = "OK" if cpu < TARGET_SECONDS else "SLOW"
    print(f"    CPU (user + system): median {cpu:.3f} s; target < {TARGET_SECONDS} s: {verdict}")
    return missed


def in_process(config: Path, sweep_id: str, repeat: int) -> None:
    """The same work without the interpreter's start-up: the queries and the files read."""
    with Client(config) as client:
        store = client.store
        work = {
            "bounded list query": lambda: store.bounded_list(),
            "results table, 20 newest": lambda: client.table(store.recent_runs(20)[0]),
            "results table, the sweep": lambda: client.table(store.sweep_runs(sweep_id)),
        }
        for label, step in work.items():
            times, cpu = [], []
            for _ in range(repeat):
                started, cpu_started = time.perf_counter(), time.process_time()
                step()
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
            print(
                f"    in process, {label}: median {statistics.median(times) * 1000:.1f} ms wall, "
                f"{statistics.median(cpu) * 1000:.1f} ms CPU"
            )


def wait_latency(root: Path, samples: int) -> tuple[list[float], float]:
    """wait()'s return less completed_at, for `samples` runs; and a waiting client's CPU share."""
    db = root / "wait.db"
    config = root / "wait.toml"
    config.write_text(
        f"database = {json.dumps(str(db))}\n"
        f"runs_dir = {json.dumps(str(root / 'wait-runs'))}\n"
        "[templates.quick]\ncommand = ['/bin/true']\n"
        "[templates.slow]\ncommand = ['/bin/sleep', '" + str(IDLE_WAIT_SECONDS) + "']\n"
    )
    log = (root / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(RUNSUP), "--config", str(config), "daemon"], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + DAEMON_READY_SECONDS
        while b"daemon_ready" not in (root / "daemon.log").read_bytes():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not start: see " + str(root / "daemon.log"))
            time.sleep(0.05)
        latencies = []
        with Client(config) as client:
            for _ in range(samples):
                run = client.submit("quick", {})
                run.wait(timeout=60)
                returned = datetime.now(UTC)
                completed = run.record.completed_at
                assert completed is not None
                latencies.append((returned - completed).total_seconds())
            slow = client.submit("slow", {})
            client.wait_for(lambda: slow.refresh().status, lambda s: s != "PENDING", 60, "start")
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            slow.wait(timeout=60)
            share = (time.process_time() - cpu_before) / (time.perf_counter() - wall_before)
        return latencies, share
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
        reap_orphans()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--sweep", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--waits", type=int, default=100)
    ap.add_argument("--keep", default=None, metavar="DIR", help="build (or reuse) it here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    become_subreaper()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-client-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        started = time.perf_counter()
        config, sweep_id = make_database(root, args.runs, args.sweep)
        size = (root / "runs.db").stat().st_size / 2**20
        print(
            f"database: {args.runs} runs ({size:.0f} MiB), a sweep of {args.sweep} with results, "
            f"made in {time.perf_counter() - started:.1f} s"
        )
        missed = 0
        empty = root / "empty"
        empty.mkdir(exist_ok=True)
        floor_config = make_database(empty, 0, 0)[0]
        times, _ = time_command(floor_config, ["list"], args.repeat)
        print(
            "start-up floor, runsup list on an empty database: median "
            f"{statistics.median(times):.3f} s wall, {statistics.median(CPU_TIMES):.3f} s CPU"
        )
        cases = [
            ("runsup list", ["list"]),
            ("runsup results", ["results"]),
            ("runsup results --sweep", ["results", "--sweep", sweep_id]),
            ("runsup results --sweep --csv", ["results", "--sweep", sweep_id, "--csv"]),
        ]
        for label, command in cases:
            times, out = time_command(config, command, args.repeat)
            missed += report(f"{label} ({len(out.splitlines())} lines)", times, args.check)
        in_process(config, sweep_id, args.repeat)
        times, out = time_command(config, ["list", "--all"], 1)
        print(f"runsup list --all ({len(out.splitlines())} lines): {times[0]:.2f} s (for scale)")

        latencies, share = wait_latency(root, args.waits)
        median = statistics.median(latencies)
        p99 = percentile(latencies, 99)
        verdict = "OK" if p99 < WAIT_TARGET_SECONDS else "SLOW"
        print(
            f"Run.wait() after the final commit, {len(latencies)} runs: median "
            f"{median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
            f"(poll every {WAIT_POLL_SECONDS * 1000:.0f} ms); target < "
            f"{WAIT_TARGET_SECONDS * 1000:.0f} ms: {verdict}"
        )
        print(f"a client waiting on a running run: {share * 100:.2f} % of one CPU")
        if args.check and verdict == "SLOW":
            missed += 1
        return 1 if missed else 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
