"""run-supervisor benchmarks: one command, every scenario, one table.

    .venv/bin/python bench/run.py [--quick] [--only SCENARIO[,SCENARIO...]] [--json FILE]
                                  [--keep] [--profile DIR]

Each scenario starts the installed `runsup daemon` (next to this interpreter) as a real
process on a fresh database file and runs directory in a temporary folder, drives it the
way other programs would (plain sqlite3 INSERTs and UPDATEs, files appended to), reads the
figures from a separate process or from /proc, and stops it with everything it started.
Scenarios: latency, pickup (pickup and cancel), throughput (with task-spooler and xargs
side by side), limits (what bounds throughput here), load, output (the load read
with progress_patterns), idle, adopted (idle after a restart), capped (idle and the load with
memory caps on), memory, cli.
--profile records each daemon with py-spy. See BENCHMARKS.md for the targets, the method and
results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import PROFILE_DIR_VARIABLE, Result, become_subreaper, reap_orphans
from scenarios import FULL, QUICK, SCENARIOS

# A 1-minute load average above this (other processes wanting a core) makes figures noisy.
BUSY_LOAD = 0.5


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(quick: bool) -> str:
    """Machine, date and mode, for the top of the table."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"run-supervisor benchmarks, {stamp}, {'quick' if quick else 'full'} run\n"
        f"machine: {os.cpu_count()} cores ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; {load_text()}"
    )
    if os.getloadavg()[0] > BUSY_LOAD:
        text += "\nWARNING: the machine is busy with other work: figures will be noisy"
    return text


def load_text() -> str:
    """The load averages: other work on the machine skews every figure here."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def table(results: list[Result]) -> str:
    """The results as an aligned plain-text table."""
    rows = [("scenario", "figure", "value", "target", "met", "note")]
    for r in results:
        met = "" if r.met is None else "yes" if r.met else "NO"
        rows.append((r.scenario, r.figure, r.formatted(), r.target, met, r.note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[c].ljust(widths[c]) if c != 2 else row[c].rjust(widths[c]) for c in range(5)]
        lines.append("  ".join([*cells, row[5]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  ----")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record each daemon with py-spy (pip install py-spy) into this folder",
    )
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    sizes = QUICK if args.quick else FULL
    if args.profile:
        os.environ[PROFILE_DIR_VARIABLE] = str(args.profile.resolve())
    become_subreaper()
    print(header(args.quick), flush=True)
    results: list[Result] = []
    failed = []
    root = Path(tempfile.mkdtemp(prefix="runsup-bench-"))
    started = time.monotonic()
    for name in chosen:
        t0 = time.monotonic()
        print(f"... {name}", end="", flush=True)
        try:
            results += SCENARIOS[name](root / name, sizes)
            print(f" ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception:
            print(" FAILED", flush=True)
            traceback.print_exc()
            failed.append(name)
        reap_orphans()
    print()
    print(table(results))
    print(
        f"\n{len(chosen)} scenario(s) in {time.monotonic() - started:.0f} s; at the end "
        f"{load_text()}" + (f"; data kept in {root}" if args.keep else "")
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
