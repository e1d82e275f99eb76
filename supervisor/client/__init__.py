"""The Python client (SPEC section 16): what the command line gives people, for programs and
notebooks, writing only what SPEC section 3 lets other programs write.

    from supervisor.client import Client

    c = Client()
    sweep = c.sweep("erlang-demo", base={"channels": 10}, grid={"erlang": [4.0, 8.0]})
    sweep.wait()
    rows = sweep.results()
"""

from supervisor.client.core import Client
from supervisor.client.errors import (
    NoDaemonWarning,
    ResultsError,
    ResultsWarning,
    RunFailed,
    WaitTimeout,
)
from supervisor.client.handles import Run, RunChange, Runs, Sweep
from supervisor.client.session import WAIT_POLL_SECONDS

__all__ = [
    "WAIT_POLL_SECONDS",
    "Client",
    "NoDaemonWarning",
    "ResultsError",
    "ResultsWarning",
    "Run",
    "RunChange",
    "RunFailed",
    "Runs",
    "Sweep",
    "WaitTimeout",
]
