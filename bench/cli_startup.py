"""Wall time of `runsup list` on a 100-row database (target: median under 0.5 s).

Usage: python bench/cli_startup.py [--runs N] [--rows N] [--check]
(also the `cli` scenario of bench/run.py)

Runs the installed `runsup` next to this interpreter against a temporary database, so
nothing touches the real state directory. Prints the median; with --check, exits 1 when
the median misses the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib import print_median

from supervisor.db import Store
from supervisor.executors.base import ProcessRecord
from supervisor.states import RunStatus

TARGET_SECONDS = 0.5
DEFAULT_RUNS = 11
DEFAULT_ROWS = 100
RUNSUP = Path(sys.executable).parent / "runsup"


def fill(store: Store, rows: int) -> None:
    """`rows` runs in a mix of statuses, some with progress, like a busy week."""
    for i in range(rows):
        run_id = store.submit("erlang-demo", json.dumps({"seed": i}), name=f"bench {i}").id
        if i % 4 == 0:
            continue  # stays PENDING
        process = ProcessRecord(
            pid=10_000 + i,
            pgid=10_000 + i,
            start_ticks=i,
            boot_id="bench",
            keeper_pid=20_000 + i,
            keeper_start_ticks=i,
        )
        store.mark_running(run_id, process, run_dir=f"/tmp/bench/{run_id}")
        if i % 4 == 1:
            continue  # stays RUNNING
        final = RunStatus.COMPLETED if i % 4 == 2 else RunStatus.FAILED
        store.finish(run_id, final, reason="bench", exit_code=0 if final == "COMPLETED" else 1)


def measure(runs: int, rows: int, tmp: Path | None = None) -> list[float]:
    """Wall times of `runs` calls of `runsup list` on a fresh `rows`-row database in `tmp`."""
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="runsup-bench-", dir=tmp) as where:
        root = Path(where)
        db = root / "runs.db"
        store = Store.open(f"sqlite:///{db}")
        fill(store, rows)
        store.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
        env.update(
            HOME=str(root),
            XDG_STATE_HOME=str(root / "state"),
            RUNSUP_DATABASE=str(db),
            RUNSUP_RUNS_DIR=str(root / "runs"),
        )
        command = [str(RUNSUP), "list", "--all"]
        subprocess.run(command, env=env, check=True, capture_output=True)  # warm the caches
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            listed = len(result.stdout.splitlines()) - 1
            if listed != rows:
                raise RuntimeError(f"expected {rows} rows in the listing, got {listed}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--check", action="store_true", help="exit 1 above the target")
    args = parser.parse_args()
    try:
        times = measure(args.runs, args.rows)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    label = f"runsup list, {args.rows} rows, {args.runs} runs"
    return print_median(label, times, TARGET_SECONDS, args.check)


if __name__ == "__main__":
    sys.exit(main())
