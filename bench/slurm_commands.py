"""Latency of the Slurm command layer against a real single-node test cluster.

    .venv/bin/python bench/slurm_commands.py [--held N] [--ended N]

Starts the test cluster of tests/slurm_cluster.py (without, then with accounting), and prints:
its start-up time; sbatch, squeue (query), sacct, find_by_name and scancel latencies (median
of several calls); submit -> RUNNING as squeue sees it; and how many client calls one query of
10 and of N jobs makes (it must not grow with N). Held jobs (`--hold`) stand for a queue of N
without using a CPU. Needs root and Debian's slurm packages (see .ci/run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from slurm_cluster import SlurmCluster, running_cluster, unavailable_reason

from supervisor.executors.slurm.commands import SlurmCommands
from supervisor.executors.slurm.parsing import SubmitRequest, job_name

REPEATS = 7
POLL_SECONDS = 0.01
WAIT_SECONDS = 60.0


def median_ms(action: Callable[[], object], repeats: int = REPEATS) -> float:
    """The median wall time of `action` in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def submit(commands: SlurmCommands, base: Path, run_id: str, body: str, *args: str) -> str:
    """Submit a /bin/sh job in its own run directory."""
    run_dir = base / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    script = f"#!/bin/sh\n{body}\n"
    return commands.submit(
        SubmitRequest(run_id=run_id, run_dir=run_dir, script=script, sbatch_args=args)
    )


def wait(commands: SlurmCommands, job_ids: list[str], done: Callable[[str], bool]) -> None:
    """Poll until `done(state)` holds for every job."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if all(done(info.state) for info in commands.query(job_ids).values()):
            return
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"jobs {job_ids[:3]}... did not get there in {WAIT_SECONDS:.0f} s")


def measure(cluster: SlurmCluster, held: int, ended: int) -> None:
    """Print the figures for one cluster."""
    label = "with accounting" if cluster.accounting else "without accounting"
    print(f"\n## cluster {label}")
    print(f"start-up (daemons up, node idle, first job done): {cluster.startup_seconds:.2f} s")
    commands = SlurmCommands(env=dict(cluster.env))
    commands.accounting()
    base = cluster.base

    starts = []
    for n in range(5):
        t0 = time.perf_counter()
        job = submit(commands, base, f"start{n}", "sleep 30")
        wait(commands, [job], lambda s: s == "RUNNING")
        starts.append(time.perf_counter() - t0)
        commands.cancel(job)
    print(f"submit -> RUNNING (squeue polled every 10 ms): {statistics.median(starts):.2f} s")

    n = iter(range(1_000_000))
    print(f"sbatch: {median_ms(lambda: submit(commands, base, f'lat{next(n)}', 'true')):.0f} ms")
    cluster.cancel_all()

    held_ids = [submit(commands, base, f"held{i}", "true", "--hold") for i in range(held)]
    for size in (10, held):
        ids = held_ids[:size]
        before = commands.total_calls
        ms = median_ms(lambda ids=ids: commands.query(ids))  # type: ignore[misc]
        calls = (commands.total_calls - before) / REPEATS
        print(f"query {size} queued jobs: {ms:.0f} ms, {calls:g} client call(s)")
    names = [job_name(f"held{i}") for i in range(held)]
    ms = median_ms(lambda: commands.find_by_name(names))
    print(f"find_by_name {held} names: {ms:.0f} ms")
    ms = median_ms(lambda: commands.cancel(held_ids.pop()))
    print(f"scancel (queued job): {ms:.0f} ms")
    cluster.cancel_all()

    done_ids = [submit(commands, base, f"done{i}", "true") for i in range(ended)]
    wait(commands, done_ids, lambda s: s == "COMPLETED")
    before = commands.calls.copy()
    ms = median_ms(lambda: commands.query(done_ids))
    per_query = {k: v / REPEATS for k, v in (commands.calls - before).items()}
    print(f"query {ended} ended jobs: {ms:.0f} ms, calls per query {per_query}")
    print(f"calls by program in all: {dict(commands.calls)}")


def main() -> None:
    """Run both clusters and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held", type=int, default=500, help="queued jobs for the big query")
    parser.add_argument("--ended", type=int, default=50, help="ended jobs queried at once")
    args = parser.parse_args()
    for accounting in (False, True):
        reason = unavailable_reason(accounting)
        if reason is not None:
            print(f"skipped: {reason}")
            continue
        with tempfile.TemporaryDirectory(prefix="runsup-bench-slurm-") as tmp:
            started = time.perf_counter()
            with running_cluster(Path(tmp), accounting=accounting) as cluster:
                measure(cluster, args.held, args.ended)
                stopping = time.perf_counter()
            print(f"teardown: {time.perf_counter() - stopping:.2f} s")
            print(f"total: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
