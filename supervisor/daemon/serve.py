"""The daemon's entry: the umask, the database opened for the loop, and the loop run."""

from __future__ import annotations

import os

from supervisor.daemon.loop import Daemon
from supervisor.db import Store
from supervisor.settings import Settings

# The loop's own writes wait at most this long for another program's write lock, then give up
# and try again later: a locked database must never stall the loop (systemd's watchdog, signal
# escalation and progress go on meanwhile).
LOOP_BUSY_TIMEOUT_MS = 100
# Bits always added to the daemon's umask (hence its runs'): as systemd's UMask=0027.
UMASK_FLOOR = 0o027


def run_daemon(settings: Settings, *, config_file: str | None = None) -> int:
    """Open the database (upgrading its schema) and serve until SIGTERM or SIGINT."""
    # Nothing the daemon, a keeper or a simulation creates is writable by group or others,
    # nor open to others, whatever umask we were started with (a stricter one is kept).
    os.umask(os.umask(UMASK_FLOOR) | UMASK_FLOOR)
    path = settings.database_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    Store.open(settings.database_url).close()  # upgrade the schema, waiting as long as it takes
    store = Store.open(
        settings.database_url,
        upgrade=False,
        busy_timeout_ms=LOOP_BUSY_TIMEOUT_MS,
        write_attempts=1,
    )
    try:
        return Daemon(settings, store, config_file=config_file).run()
    finally:
        store.close()
