"""Load (issue 6): 1000 queued runs, 100 at once, 20 processes submitting (most as a foreign
program would, with plain sqlite3 INSERTs; some through `runsup submit`), 8 processes reading
the database in a loop. Every run starts exactly once and ends COMPLETED, no process sees
"database is locked", the daemon's memory stays flat. Prints its figures (run with -s).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import RUNSUP, DaemonHarness

from supervisor.db import RunRecord, Store

RUNS = 1000
CONCURRENT = 100
SUBMITTERS = 20
CLI_SUBMITTERS = 4  # of the 20, these submit some of their runs through `runsup submit`
CLI_SUBMITS_EACH = 5
READERS = 8
READERS_STOP_SECONDS = 30.0  # readers see the stop file within a query or two
RUN_SECONDS = 0.3  # each run sleeps this long, so that 100 are really running at once
DEADLINE_SECONDS = 150
RSS_SAMPLE_SECONDS = 0.25
# Each submitter pauses up to this long between two runs: the queue fills over ~8 s. (With
# no pause, 20 writers at sqlite3's default synchronous=FULL spend the write lock on their own
# fsyncs: single INSERTs then waited up to 2.5 s here, half of the default busy timeout.)
SUBMIT_PAUSE_SECONDS = 0.3
# sqlite3's own default busy timeout, as a foreign program would leave it.
FOREIGN_TIMEOUT_SECONDS = 5.0

SUBMITTER = """\
import json, random, secrets, sqlite3, subprocess, sys, time
from datetime import datetime, timezone
db, count, cli_count, runsup, config, out, timeout, pause = sys.argv[1:9]
count, cli_count, timeout, pause = int(count), int(cli_count), float(timeout), float(pause)
ids, errors, waits = [], [], []
conn = sqlite3.connect(db, timeout=timeout)
cli_at = set(random.sample(range(count), cli_count))
for i in range(count):
    time.sleep(random.uniform(0, pause))
    start = time.monotonic()
    try:
        if i in cli_at:
            done = subprocess.run(
                [runsup, "--config", config, "submit", "--template", "mark"],
                capture_output=True, text=True, timeout=60,
            )
            if done.returncode != 0:
                errors.append("runsup submit: " + done.stderr.strip())
                continue
            ids.append(done.stdout.strip())
        else:
            run_id = secrets.token_hex(6)
            now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            with conn:
                conn.execute(
                    "INSERT INTO runs (id, status, config_json, template, created_at)"
                    " VALUES (?, 'PENDING', ?, 'mark', ?)",
                    (run_id, json.dumps({"i": i}), now),
                )
            ids.append(run_id)
            waits.append(time.monotonic() - start)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
conn.close()
with open(out, "w") as fh:
    json.dump({"ids": ids, "errors": errors, "insert_s": waits}, fh)
"""

READER = """\
import json, os, sqlite3, sys, time
db, stop, out, timeout = sys.argv[1:5]
conn = sqlite3.connect(db, timeout=float(timeout))
queries, errors, max_running, slowest = 0, [], 0, 0.0
while not os.path.exists(stop):
    start = time.monotonic()
    try:
        with conn:
            counts = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status"))
            conn.execute(
                "SELECT id, status, pid, pgid, current_iteration FROM runs"
                " WHERE status = 'RUNNING' ORDER BY started_at LIMIT 50"
            ).fetchall()
        max_running = max(max_running, counts.get("RUNNING", 0))
        queries += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    slowest = max(slowest, time.monotonic() - start)
    time.sleep(0.005)
conn.close()
with open(out, "w") as fh:
    json.dump({"queries": queries, "errors": errors, "max_running": max_running,
               "slowest_s": slowest}, fh)
"""


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class RssSampler(threading.Thread):
    """Samples a process's RSS (KiB) until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.kib: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.kib.append(rss_kib(self.pid))
            time.sleep(RSS_SAMPLE_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()


def mark_template(launches: Path) -> str:
    """A run that appends its id to a shared O_APPEND file (to count launches) and sleeps."""
    argv = ["/bin/sh", "-c", 'echo "$RUNSUP_RUN_ID" >> "$0"; sleep "$1"']
    return f"[templates.mark]\ncommand = {json.dumps([*argv, str(launches), str(RUN_SECONDS)])}\n"


def start_readers(h: DaemonHarness, stop: Path) -> list[subprocess.Popen[bytes]]:
    """READERS processes querying the database in a loop until `stop` exists."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(READERS):
            out = h.tmp / f"reader{i}.json"
            args = [str(h.db_path), str(stop), str(out), str(FOREIGN_TIMEOUT_SECONDS)]
            procs.append(subprocess.Popen([sys.executable, "-c", READER, *args]))
    except BaseException:
        end_all(procs, 0.0)
        raise
    return procs


def end_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait up to `timeout` for each process to exit by itself, then kill what is left."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def submit_all(h: DaemonHarness) -> list[dict[str, Any]]:
    """SUBMITTERS processes submitting RUNS in all, at once; their reports."""
    procs = []
    for i in range(SUBMITTERS):
        out = h.tmp / f"submitter{i}.json"
        cli = CLI_SUBMITS_EACH if i < CLI_SUBMITTERS else 0
        args = [str(h.db_path), str(RUNS // SUBMITTERS), str(cli), str(RUNSUP), str(h.config)]
        args += [str(out), str(FOREIGN_TIMEOUT_SECONDS), str(SUBMIT_PAUSE_SECONDS)]
        procs.append(subprocess.Popen([sys.executable, "-c", SUBMITTER, *args]))
    try:
        for proc in procs:
            assert proc.wait(DEADLINE_SECONDS) == 0
    finally:
        end_all(procs, 0.0)
    return [json.loads((h.tmp / f"submitter{i}.json").read_text()) for i in range(SUBMITTERS)]


def wait_all_final(h: DaemonHarness, deadline: float) -> float:
    """Wait until RUNS runs have ended; when the first one ended (monotonic)."""
    first = None
    while True:
        counts = h.store.counts()
        final = sum(counts.get(s, 0) for s in ("COMPLETED", "FAILED", "CANCELLED"))
        if final and first is None:
            first = time.monotonic()
        if final >= RUNS:
            return first or time.monotonic()
        assert time.monotonic() < deadline, f"not all runs ended in time: {counts}"
        time.sleep(0.2)


def starts_per_run(db_path: Path, ids: list[str]) -> tuple[dict[str, RunRecord], Counter[str]]:
    """Every row, and how many times each run went to RUNNING (from run_events)."""
    store = Store.open(f"sqlite:///{db_path}")
    try:
        rows = {r.id: r for r in store.list_runs()}
        starts: Counter[str] = Counter()
        for run_id in ids:
            starts[run_id] = sum(e.to_status == "RUNNING" for e in store.events(run_id))
    finally:
        store.close()
    return rows, starts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_thousand_runs_hundred_at_once_many_writers_and_readers(tmp_path: Path) -> None:
    harness = DaemonHarness(tmp_path, max_concurrent_runs=CONCURRENT, rescan_interval_seconds=2.0)
    launches = tmp_path / "launches"
    harness.write_config(mark_template(launches))
    harness.start()
    assert harness.proc is not None
    sampler = RssSampler(harness.proc.pid)
    stop = tmp_path / "stop-readers"
    readers: list[subprocess.Popen[bytes]] = []
    try:
        readers = start_readers(harness, stop)
        sampler.start()
        started = time.monotonic()
        results = submit_all(harness)
        submitted_in = time.monotonic() - started
        ids = [run_id for r in results for run_id in r["ids"]]
        sub_errors = [e for r in results for e in r["errors"]]
        assert sub_errors == [], sub_errors[:5]
        assert len(ids) == len(set(ids)) == RUNS
        first_done = wait_all_final(harness, started + DEADLINE_SECONDS)
        finished_in = time.monotonic() - started
    finally:
        stop.write_text("")
        end_all(readers, READERS_STOP_SECONDS)
        sampler.stop()
        daemon_log = harness.log_text()
        harness.close()
    reports = [json.loads((tmp_path / f"reader{i}.json").read_text()) for i in range(READERS)]
    rows, starts = starts_per_run(harness.db_path, ids)
    launched = Counter(launches.read_text().split())

    # -- figures -------------------------------------------------------------------------------
    waits = [
        (r.started_at - r.created_at).total_seconds()
        for r in rows.values()
        if r.started_at and r.created_at
    ]
    inserts = [w for r in results for w in r["insert_s"]]
    kib = sampler.kib
    quarter = max(1, len(kib) // 4)
    early, late = statistics.median(kib[:quarter]), statistics.median(kib[-quarter:])
    print()
    print(f"load: {RUNS} runs, {CONCURRENT} at once, {SUBMITTERS} submitters, {READERS} readers")
    print(f"  submitted in {submitted_in:.1f} s; all ended {finished_in:.1f} s after the start")
    print(f"  run rate: {RUNS / (time.monotonic() - first_done):.1f} runs/s once going")
    print(
        f"  queue wait (created -> started): p50 {pct(waits, 50):.2f} s, "
        f"p95 {pct(waits, 95):.2f} s, max {max(waits):.2f} s"
    )
    print(
        f"  readers: {sum(r['queries'] for r in reports)} queries, slowest "
        f"{max(r['slowest_s'] for r in reports) * 1000:.1f} ms, most RUNNING seen "
        f"{max(r['max_running'] for r in reports)}"
    )
    print(
        f"  submitters: {len(inserts)} INSERTs, p50 {pct(inserts, 50) * 1000:.1f} ms, p99 "
        f"{pct(inserts, 99) * 1000:.1f} ms, max {max(inserts) * 1000:.1f} ms (busy timeout "
        f"{FOREIGN_TIMEOUT_SECONDS:g} s); {CLI_SUBMITTERS * CLI_SUBMITS_EACH} via runsup submit"
    )
    print(
        f"  daemon RSS: start {kib[0] / 1024:.1f} MiB, first quarter median {early / 1024:.1f}"
        f" MiB, last quarter median {late / 1024:.1f} MiB, max {max(kib) / 1024:.1f} MiB"
        f" ({len(kib)} samples)"
    )
    deciles = [kib[min(len(kib) - 1, i * len(kib) // 10)] / 1024 for i in range(11)]
    print("  daemon RSS by tenths of the test (MiB):", " ".join(f"{m:.1f}" for m in deciles))

    # -- what must hold ------------------------------------------------------------------------
    read_errors = [e for r in reports for e in r["errors"]]
    assert read_errors == [], read_errors[:5]
    statuses = Counter(rows[run_id].status for run_id in ids)
    assert statuses == Counter({"COMPLETED": RUNS}), statuses
    assert launched == Counter({run_id: 1 for run_id in ids}), "a run started twice or never"
    assert starts == Counter({run_id: 1 for run_id in ids})
    assert max(r["max_running"] for r in reports) <= CONCURRENT
    assert "database is locked" not in daemon_log
    assert "loop_error" not in daemon_log
    assert late - early < 16 * 1024, f"daemon memory grew by {(late - early) / 1024:.1f} MiB"
