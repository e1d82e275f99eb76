"""Wall time of plain `runsup check` on a good local setup (target: median under 1 s).

Usage: python bench/check_speed.py [--runs N] [--check]

Runs the installed `runsup` next to this interpreter with a configuration in a temporary
directory (an existing database at the current schema, a template, a hook, a metrics
address), so nothing touches the real state directory. Slurm executors are left out: their
probe is bounded by its own timeout (supervisor.checks.slurm.PROBE_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib import print_median

TARGET_SECONDS = 1.0
DEFAULT_RUNS = 11
RUNSUP = Path(sys.executable).parent / "runsup"
METRICS_PORT = 39787  # only bound for an instant by the check, never served


def measure(runs: int) -> list[float]:
    """Wall times of `runs` calls of `runsup check` on a good setup."""
    with tempfile.TemporaryDirectory(prefix="runsup-bench-check-") as where:
        root = Path(where)
        conf = root / "runsup.toml"
        conf.write_text(
            f'database = "{root / "runs.db"}"\n'
            f'runs_dir = "{root / "runs"}"\n'
            f'[hooks]\non_finish = ["/bin/true", "{{run_id}}"]\n'
            f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\n'
            f'[templates.sim]\ncommand = ["{sys.executable}", "{{config_path}}"]\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
        env.update(HOME=str(root), XDG_STATE_HOME=str(root / "state"))
        subprocess.run([str(RUNSUP), "db", "upgrade", "--config", str(conf)], env=env,
                       check=True, capture_output=True)  # fmt: skip  # the database, warm caches
        command = [str(RUNSUP), "check", "--config", str(conf)]
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if result.returncode != 0:
                raise RuntimeError(f"runsup check failed:\n{result.stdout}{result.stderr}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--check", action="store_true", help="exit 1 above the target")
    args = parser.parse_args()
    try:
        times = measure(args.runs)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    label = f"runsup check, good local setup, {args.runs} runs"
    return print_median(label, times, TARGET_SECONDS, args.check)


if __name__ == "__main__":
    sys.exit(main())
