"""The independent reader: a separate process polling the database with plain sqlite3.

    python reader.py DB value RUN_ID    # every change of the run's current_erlang
    python reader.py DB status          # the first sighting of each (run id, status)

Each poll is one short read transaction (autocommit), as a GUI's would be, with a pause of
POLL_PAUSE_SECONDS between polls so that on a small machine it does not starve the daemon
of a core (the pause bounds the reader's own resolution). Prints `ready` once it polls;
on SIGTERM prints one JSON list of [CLOCK_MONOTONIC seconds, value...] sightings and exits.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time

POLL_PAUSE_SECONDS = 0.0002

stopping = False


def on_term(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


def main() -> int:
    db, mode = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, on_term)
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    clock = time.clock_gettime
    mono = time.CLOCK_MONOTONIC
    sightings: list[list[object]] = []
    if mode == "value":
        query, params = "SELECT current_erlang FROM runs WHERE id = ?", (sys.argv[3],)
        last: object = None
        print("ready", flush=True)
        while not stopping:
            row = conn.execute(query, params).fetchone()
            value = row[0] if row else None
            if value != last:
                sightings.append([clock(mono), value])
                last = value
            time.sleep(POLL_PAUSE_SECONDS)
    elif mode == "status":
        seen: set[tuple[str, str]] = set()
        query = "SELECT id, status FROM runs"
        print("ready", flush=True)
        while not stopping:
            rows = conn.execute(query).fetchall()
            t = clock(mono)
            for run_id, status in rows:
                if (run_id, status) not in seen:
                    seen.add((run_id, status))
                    sightings.append([t, run_id, status])
            time.sleep(POLL_PAUSE_SECONDS)
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    print(json.dumps(sightings), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
