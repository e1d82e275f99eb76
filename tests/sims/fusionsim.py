"""A simulation that prints its progress as FUSION's real simulator does, to stderr.

`Starting simulation for 300.0 Erlang (load 1/3)` when a load starts and `Iteration 2 out of 6
completed for Erlang: 300.0` after each iteration (see shared/FUSION.md). Options add hostile
output between the progress lines: one very long line, binary garbage, a burst of short
lines as fast as it can write them. With --wait-for FILE it pauses before each progress line
until FILE holds at least that line's number (a test's gate), so a test can pace it.
No runsup import: it runs as a plain script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# SPEC section 12's patterns for the two lines this prints (tests import them from here).
START_PATTERN = (
    r"Starting simulation for (?P<erlang>[0-9.]+) Erlang "
    r"\(load (?P<erlang_number>[0-9]+)/(?P<total_erlangs>[0-9]+)\)"
)
ITERATION_PATTERN = r"Iteration (?P<iteration>[0-9]+) out of (?P<total_iterations>[0-9]+) completed"
ERROR_PATTERN = r"^ERROR (?P<error>.*)"  # what --error prints

GATE_POLL_SECONDS = 0.005
BURST_LINE = b"burst line %07d: some chatter a simulation might print\n"
BURST_BATCH = 10_000  # lines per write(2): fast enough for a million a second


def parse() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", type=float, nargs="+", default=[300.0, 350.0, 400.0])
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between iterations")
    ap.add_argument("--long-line", type=int, default=0, help="print a line this many bytes long")
    ap.add_argument("--binary", type=int, default=0, help="print this many bytes of garbage")
    ap.add_argument("--burst", type=int, default=0, help="print this many short lines at once")
    ap.add_argument("--error", default=None, help="print 'ERROR <text>' at the end, exit 1")
    ap.add_argument("--wait-for", default=None, help="gate file (see the module docstring)")
    return ap.parse_args()


def write(data: bytes) -> None:
    """Write all of data to stderr (fd 2), unbuffered."""
    view = memoryview(data)
    while view:
        view = view[os.write(2, view) :]


def gate(path: str | None, number: int) -> None:
    """Wait until the gate file's content is an integer >= number."""
    if path is None:
        return
    while True:
        try:
            if int(Path(path).read_text() or "0") >= number:
                return
        except (OSError, ValueError):
            pass
        time.sleep(GATE_POLL_SECONDS)


def hostile(args: argparse.Namespace) -> None:
    """The hostile output, once, before the first load."""
    if args.long_line:
        write(b"Iteration 999 out of 999 completed " + b"x" * args.long_line + b"\n")
    if args.binary:
        garbage = bytes((i * 131 + 7) % 256 for i in range(args.binary))
        write(garbage.replace(b"\n", b"\x00") + b"\n")
    for start in range(0, args.burst, BURST_BATCH):
        count = min(BURST_BATCH, args.burst - start)
        write(b"".join(BURST_LINE % i for i in range(start, start + count)))


def main() -> int:
    """Print the loads and iterations; the exit code says whether it failed."""
    args = parse()
    hostile(args)
    number = 0
    total = len(args.loads)
    for index, erlang in enumerate(args.loads, 1):
        number += 1
        gate(args.wait_for, number)
        write(f"Starting simulation for {erlang} Erlang (load {index}/{total})\n".encode())
        for it in range(1, args.iterations + 1):
            if args.interval:
                time.sleep(args.interval)
            number += 1
            gate(args.wait_for, number)
            write(
                f"Iteration {it} out of {args.iterations} completed for Erlang: {erlang}\n".encode()
            )
    if args.error:
        write(f"ERROR {args.error}\n".encode())
        return 1
    sys.stdout.write("done\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
