"""The Slurm executor through the installed daemon, against a real single-node test cluster.

    .venv/bin/python bench/slurm_executor.py [--jobs N] [--window S] [--poll S]

Starts the test cluster of tests/slurm_cluster.py (no accounting) and a daemon whose runs go to
it (tests/slurm_daemon.py), and prints:
- PENDING -> job submitted: the row written, until its external_id is set (median of 5);
- job start -> RUNNING in the database: from the job's first instruction ("running"), and from
  the moment squeue first shows the job started ("controller"; polled by the bench), until the
  row says RUNNING (Slurm says RUNNING before the batch script runs: the first is near 0);
- cancel asked -> SIGTERM in the job: cancel_requested_at written, until the job's handler runs;
- queries per minute to the controller (squeue / sacct calls the daemon makes, counted by a
  wrapper on its PATH) with 10 and with N jobs of ours in the queue (held: they use no CPU);
- N trivial jobs end to end (rows written -> all COMPLETED) against plain `sbatch` in a loop
  (-> every job ended).
Needs root and Debian's slurm packages (see .ci/run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import wait_for
from slurm_cluster import SlurmCluster, running_cluster, unavailable_reason
from slurm_daemon import ClusterDaemon

REPEATS = 5
WAIT_SECONDS = 120.0
COUNT_SECONDS = 0.2  # between two counts of completed runs (each reads the database)
# The job's side of the latencies: it writes the time it started, and the time SIGTERM came.
_JOB_CODE = (
    "import signal, sys, time\n"
    "def term(*_):\n"
    "    open('term', 'w').write(repr(time.time()))\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "open('ready', 'w').write('1')\n"
    "time.sleep(600)\n"
)
# Counts the daemon's calls to the controller, then runs the real program.
_COUNTER = '#!/bin/sh\necho "$(basename "$0")" >>"{log}"\nexec /usr/bin/"$(basename "$0")" "$@"\n'


def templates(held_partition: str, poll: float) -> str:
    """The bench's templates: a python job that reports its start and SIGTERM, `true`, and a
    held job (queued without using a CPU)."""
    py = json.dumps(sys.executable)
    code = json.dumps(_JOB_CODE)
    start = json.dumps('date +%s.%N >started; exec "$1" -c "$2"')
    return "\n".join(
        [
            "[templates.timed]",
            # The job's first instruction notes its start; then the python that waits.
            f'command = ["/bin/sh", "-c", {start}, "sh", {py}, {code}]',
            'executor = "cluster"',
            "[templates.trivial]",
            'command = ["true"]',
            'executor = "cluster"',
            "[templates.held]",
            'command = ["true"]',
            'executor = "held"',
            "[executors.held]",
            'kind = "slurm"',
            f'partition = "{held_partition}"',
            'sbatch_args = ["--hold"]',
            "max_submitted = 10000",
            f"poll_interval_seconds = {poll}",
        ]
    )


def wait_until(what: str, check: Callable[[], object]) -> None:
    """Poll quickly (the figures are latencies) until `check` holds."""
    wait_for(what, check, WAIT_SECONDS)


def file_time(path: Path) -> float | None:
    """A wall-clock time the job wrote, or None while it has not."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def latencies(daemon: ClusterDaemon) -> dict[str, list[float]]:
    """Submitted, started -> RUNNING and cancel -> SIGTERM, once per repeat."""
    found: dict[str, list[float]] = {
        "submitted": [],
        "running": [],
        "controller": [],
        "sigterm": [],
    }
    for _ in range(REPEATS):
        for name, seconds in one_run(daemon).items():
            found[name].append(seconds)
    return found


def one_run(daemon: ClusterDaemon) -> dict[str, float]:
    """The three latencies of one run of the `timed` template."""
    begun = time.time()
    run_id = daemon.submit(template="timed")
    wait_until("the job id", lambda: daemon.run(run_id).external_id)
    submitted = time.time() - begun
    run_dir = daemon.cluster_runs / run_id
    job_id = daemon.run(run_id).external_id or ""
    wait_until("the controller", lambda: daemon.cluster.job_state(job_id) != "PENDING")
    seen = time.time()
    wait_until("the job to start", lambda: file_time(run_dir / "started"))
    started = file_time(run_dir / "started") or 0.0
    wait_until("RUNNING", lambda: daemon.run(run_id).status == "RUNNING")
    running = time.time() - started
    controller = time.time() - seen
    wait_until("its SIGTERM handler", lambda: (run_dir / "ready").exists())
    asked = time.time()
    daemon.ask_cancel(run_id)
    wait_until("SIGTERM in the job", lambda: file_time(run_dir / "term"))
    sigterm = (file_time(run_dir / "term") or 0.0) - asked
    daemon.wait_final(run_id, WAIT_SECONDS)
    return {
        "submitted": submitted,
        "running": running,
        "controller": controller,
        "sigterm": sigterm,
    }


def queries_per_minute(daemon: ClusterDaemon, calls: Path, jobs: int, window: float) -> float:
    """The daemon's squeue + sacct calls per minute with `jobs` held jobs of ours queued."""
    run_ids = [daemon.submit(template="held") for _ in range(jobs)]
    wait_until(
        f"{jobs} jobs submitted",
        lambda: all(daemon.run(r).external_id for r in run_ids),
    )
    before = _count(calls)
    time.sleep(window)
    per_minute = (_count(calls) - before) * 60.0 / window
    for run_id in run_ids:
        daemon.ask_cancel(run_id)
    wait_until("the held jobs cancelled", lambda: all(daemon.run(r).is_final for r in run_ids))
    return per_minute


def _count(calls: Path) -> int:
    try:
        lines = calls.read_text().split()
    except FileNotFoundError:
        return 0
    return sum(name in ("squeue", "sacct") for name in lines)


def end_to_end(daemon: ClusterDaemon, jobs: int) -> float:
    """Seconds from writing `jobs` trivial rows to all of them COMPLETED."""
    begun = time.monotonic()
    run_ids = [daemon.submit(template="trivial") for _ in range(jobs)]

    # Nothing else of this bench completes: the count is these runs'.
    while daemon.store.counts().get("COMPLETED", 0) < len(run_ids):
        if time.monotonic() - begun > WAIT_SECONDS * 10:
            raise AssertionError(f"{jobs} runs not COMPLETED in time")
        time.sleep(COUNT_SECONDS)
    return time.monotonic() - begun


def plain_sbatch(cluster: SlurmCluster, base: Path, jobs: int) -> float:
    """Seconds for `jobs` `sbatch --wrap=true` in a loop until every job has ended."""
    out = base / "plain"
    out.mkdir()
    begun = time.monotonic()
    for _ in range(jobs):
        cluster.run("sbatch", "--parsable", f"--output={out}/%j.out", "--wrap=true")
    wait_for("every plain job to end", lambda: not cluster.live_job_ids(), WAIT_SECONDS * 10)
    return time.monotonic() - begun


def main() -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--poll", type=float, default=1.0, help="poll_interval_seconds")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="runsup-bench-slurm-") as tmp:
        base = Path(tmp)
        with running_cluster(base / "cluster") as cluster:
            wrappers = base / "bin"
            wrappers.mkdir()
            calls = base / "calls.log"
            for name in ("squeue", "sacct"):
                path = wrappers / name
                path.write_text(_COUNTER.format(log=calls))
                path.chmod(0o755)
            (base / "d").mkdir()
            daemon = ClusterDaemon(
                base / "d", cluster, poll_interval=args.poll, max_concurrent_runs=1
            )
            daemon.executor_extra = "max_submitted = 1000"
            daemon.write_config(templates("debug", args.poll))
            daemon.start(env={"PATH": f"{wrappers}{os.pathsep}{cluster.env['PATH']}"})
            try:
                print(f"poll_interval_seconds = {args.poll}")
                for name, values in latencies(daemon).items():
                    ms = [v * 1000 for v in values]
                    print(
                        f"{name:>10}: median {statistics.median(ms):7.0f} ms  "
                        f"(min {min(ms):.0f}, max {max(ms):.0f}, n={len(ms)})"
                    )
                for jobs in (10, args.jobs):
                    rate = queries_per_minute(daemon, calls, jobs, args.window)
                    print(f"queries per minute with {jobs:>4} jobs queued: {rate:.1f}")
                ours = end_to_end(daemon, args.jobs)
                daemon.stop()  # lets it end the last stand-ins
            finally:
                daemon.close()
            theirs = plain_sbatch(cluster, base, args.jobs)
            print(
                f"{args.jobs} trivial jobs: daemon {ours:.1f} s, plain sbatch loop {theirs:.1f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
