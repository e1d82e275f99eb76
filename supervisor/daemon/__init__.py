"""The daemon: the loop (loop.py) composing the owners of its tables (supervision.py,
progressfeed.py, launcher.py, foreign.py, readopt.py, status.py, queuekeeper.py), each run's state
machine (runstate.py), recovery's decisions (recovery.py) and batched writes (outbox.py)."""

from supervisor.daemon.loop import Daemon
from supervisor.daemon.serve import run_daemon
from supervisor.daemon.wakeups import CRASH_POINT_VARIABLE, crash_point

__all__ = ["CRASH_POINT_VARIABLE", "Daemon", "crash_point", "run_daemon"]
