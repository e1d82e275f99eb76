"""Progress latency with and without a flood of /metrics scrapes (the daemon's own endpoint).

Usage: python bench/metrics_load.py [--rows N] [--samples N] [--clients N]

Starts the installed `runsup daemon` with `[metrics] listen` on a free loopback port, over a
database holding N final runs (so each collection is real work), and one running run. Then
measures, as bench/run.py's `latency` scenario does, how long a line appended to the run's
progress.jsonl takes to be seen in the database by another process: first quietly, then
while a separate process keeps --clients connections asking GET /metrics back to back.
Prints both, and how many scrapes were answered meanwhile.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import BenchDaemon, percentile
from metrics_scrape import fill
from scenarios import SETTLE_SECONDS, measure_progress_latency

DEFAULT_ROWS = 100_000
DEFAULT_SAMPLES = 300
DEFAULT_CLIENTS = 8
MS = 1000.0
HAMMER_TIMEOUT_SECONDS = 10.0
# The hammer: CLIENTS threads, each GET /metrics back to back until stdin closes; prints
# "answered failed" at the end.
HAMMER = """
import sys, threading, urllib.request
url, clients = sys.argv[1], int(sys.argv[2])
done = threading.Event()
counts = [0, 0]
def hammer():
    while not done.is_set():
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                r.read()
            counts[0] += 1
        except OSError:
            counts[1] += 1
threads = [threading.Thread(target=hammer) for _ in range(clients)]
for t in threads:
    t.start()
print("started", flush=True)
sys.stdin.read()
done.set()
for t in threads:
    t.join()
print(counts[0], counts[1], flush=True)
"""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(latencies: list[float], missed: int) -> str:
    """Median, p99 and max in ms."""
    med = statistics.median(latencies) * MS
    p99 = percentile(latencies, 99) * MS
    gone = f", {missed} never seen" if missed else ""
    return f"median {med:6.1f} ms  p99 {p99:6.1f} ms  max {max(latencies) * MS:6.1f} ms{gone}"


def main() -> int:
    """Start, measure quietly, measure under load, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with tempfile.TemporaryDirectory(prefix="runsup-bench-load-") as where:
        d = BenchDaemon(Path(where), max_concurrent=4)
        with d.config.open("a") as fh:
            fh.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        d.db.parent.mkdir(parents=True, exist_ok=True)
        fill(d.db, args.rows)
        with d:
            [run_id] = d.insert_pending("sleep")
            d.wait("the run RUNNING", lambda: d.count("RUNNING") == 1)
            time.sleep(SETTLE_SECONDS)
            quiet = measure_progress_latency(d, run_id, args.samples, seed=8)
            hammer = subprocess.Popen(
                [sys.executable, "-c", HAMMER, url, str(args.clients)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert hammer.stdin is not None and hammer.stdout is not None
            hammer.stdout.readline()
            began = time.monotonic()
            loaded = measure_progress_latency(d, run_id, args.samples, seed=9)
            hammer.stdin.close()
            answered, failed = (int(x) for x in hammer.stdout.readline().split())
            hammer.wait(HAMMER_TIMEOUT_SECONDS)
            elapsed = time.monotonic() - began
    print(f"database: {args.rows} final runs; {args.samples} progress lines each")
    print(f"quiet                       {summary(*quiet)}")
    print(f"{args.clients} clients on /metrics     {summary(*loaded)}")
    rate = answered / elapsed
    print(f"scrapes answered under load: {answered} ({rate:.0f}/s), failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
