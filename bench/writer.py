"""The progress load: appends iteration records to many progress.jsonl files at a fixed rate.

    python writer.py SECONDS RATE FILE...

Each file gets RATE lines a second, spread evenly (files are visited in slices every
TICK_SECONDS, not all at once), for SECONDS. Every line carries `erlang` = the
CLOCK_MONOTONIC time it was written, so a reader of the database sees how old what it reads
is. One process writes for all runs, so that 200 simulations' worth of lines costs one
interpreter, not 200, on a small machine. Prints a JSON summary at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime

TICK_SECONDS = 0.005


def main() -> int:
    seconds, rate = float(sys.argv[1]), float(sys.argv[2])
    paths = sys.argv[3:]
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) for p in paths]
    clock, mono = time.clock_gettime, time.CLOCK_MONOTONIC
    ticks_per_round = max(1, round(1 / rate / TICK_SECONDS))
    per_tick = -(-len(fds) // ticks_per_round)
    start = clock(mono)
    end = start + seconds
    tick = 0
    written = 0
    late = 0.0
    iteration = [0] * len(fds)
    while True:
        due = start + tick * TICK_SECONDS
        t = clock(mono)
        if due > t:
            time.sleep(due - t)
        elif t - due > late:
            late = t - due
        if due >= end:
            break
        first = (tick % ticks_per_round) * per_tick
        ts = datetime.now(UTC).isoformat()
        for i in range(first, min(first + per_tick, len(fds))):
            iteration[i] += 1
            line = (
                f'{{"type":"iteration","ts":"{ts}","erlang":{clock(mono)!r},'
                f'"iteration":{iteration[i]},"total_iterations":1000000000,'
                '"metrics":{"blocking_prob":0.0123}}\n'
            )
            os.write(fds[i], line.encode())
            written += 1
        tick += 1
    elapsed = clock(mono) - start
    for fd in fds:
        os.close(fd)
    usage = os.times()
    print(
        json.dumps(
            {
                "lines": written,
                "seconds": elapsed,
                "lines_per_second": written / elapsed,
                "max_late_seconds": late,
                "cpu_seconds": usage.user + usage.system,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
