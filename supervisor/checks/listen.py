"""`[metrics] listen`: can the daemon serve /metrics on that address?"""

from __future__ import annotations

import errno
import socket
import urllib.request
from dataclasses import dataclass

from supervisor.checks.result import CheckResult, ok, warn
from supervisor.settings import ListenAddress, Settings

# How long to wait for an answer from whatever already listens on the port.
HTTP_PROBE_TIMEOUT_SECONDS = 1.0
# A body that holds this is the /metrics of a run-supervisor daemon.
METRIC_PREFIX = b"runsup_"
MAX_PROBE_BODY_BYTES = 1024 * 1024
# A wildcard address is probed over loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class ListenProbe:
    """free: the daemon could bind it; served: a runsup /metrics answers there; else why not."""

    free: bool
    served: bool = False
    problem: str | None = None


def probe_listen(address: ListenAddress) -> ListenProbe:
    """Try to bind the address (as an HTTP server would, SO_REUSEADDR); when it is taken,
    ask whoever has it for /metrics."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return ListenProbe(False, problem=f"cannot resolve {address.host}: {exc.strerror}")
    family, kind, proto, _, sockaddr = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            if _serves_metrics(address):
                return ListenProbe(False, served=True)
            return ListenProbe(False, problem="the port is taken by another program")
        if exc.errno == errno.EADDRNOTAVAIL:
            return ListenProbe(False, problem=f"{address.host} is not an address of this machine")
        return ListenProbe(False, problem=exc.strerror or str(exc))
    return ListenProbe(True)


def _serves_metrics(address: ListenAddress) -> bool:
    host = _LOOPBACK.get(address.host, address.host)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{address.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_PROBE_TIMEOUT_SECONDS) as reply:
            return METRIC_PREFIX in reply.read(MAX_PROBE_BODY_BYTES)
    except (OSError, ValueError):
        return False


def metrics_check(settings: Settings, probe: ListenProbe | None) -> CheckResult:
    """The metrics address: free, or already served by a running daemon (a WARN otherwise: no
    run depends on it)."""
    listen = settings.metrics.listen
    if listen is None or probe is None:
        return ok("metrics", "not served over HTTP (no [metrics] listen)")
    where = (
        f"{listen.host}:{listen.port}"
        if ":" not in listen.host
        else (f"[{listen.host}]:{listen.port}")
    )
    facts = {"listen": where, "free": probe.free, "served": probe.served}
    if probe.served:
        return ok("metrics", f"{where} is served by a running runsup daemon", **facts)
    if probe.problem is not None:
        return warn(
            "metrics",
            f"{where}: {probe.problem}; the daemon would not serve /metrics",
            "choose another [metrics] listen address or free the port",
            **facts,
        )
    return ok("metrics", f"{where} is free", **facts)
