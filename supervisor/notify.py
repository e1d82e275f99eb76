"""sd_notify in plain Python: READY, STATUS, WATCHDOG, RELOADING and STOPPING datagrams."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

import structlog

_log = structlog.get_logger(__name__)

NOTIFY_SOCKET_VAR = "NOTIFY_SOCKET"
WATCHDOG_USEC_VAR = "WATCHDOG_USEC"
WATCHDOG_PID_VAR = "WATCHDOG_PID"

ABSTRACT_PREFIX = "@"
"""A NOTIFY_SOCKET starting with this names a socket in the abstract namespace."""

SEND_TIMEOUT_SECONDS = 1.0
"""Longest a notification may block the daemon when systemd's queue is full."""

USEC_PER_SECOND = 1_000_000
NSEC_PER_USEC = 1_000
WATCHDOG_PING_FRACTION = 0.5
"""Ping at half the watchdog period, as sd_watchdog_enabled(3) recommends."""

SYSTEMD_VARIABLES: frozenset[str] = frozenset(
    {
        # sd_notify(3) and sd_watchdog_enabled(3): would let a run speak for the daemon.
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        # sd_listen_fds(3): socket activation of the daemon, not of its runs.
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "FDSTORE",
        # Identity of the daemon's unit, invocation and processes.
        "INVOCATION_ID",
        "MAINPID",
        "MANAGERPID",
        "SYSTEMD_EXEC_PID",
        "PIDFILE",
        # The daemon's journal connection; a run writes to its own sim.log.
        "JOURNAL_STREAM",
        "LOG_NAMESPACE",
        # The daemon's secrets.
        "CREDENTIALS_DIRECTORY",
        # Memory pressure protocol of the daemon's cgroup.
        "MEMORY_PRESSURE_WATCH",
        "MEMORY_PRESSURE_WRITE",
        # How the daemon's unit was triggered, or how a previous one ended.
        "TRIGGER_UNIT",
        "TRIGGER_PATH",
        "TRIGGER_TIMER_REALTIME_USEC",
        "TRIGGER_TIMER_MONOTONIC_USEC",
        "SERVICE_RESULT",
        "EXIT_CODE",
        "EXIT_STATUS",
        "MONITOR_SERVICE_RESULT",
        "MONITOR_EXIT_CODE",
        "MONITOR_EXIT_STATUS",
        "MONITOR_INVOCATION_ID",
        "MONITOR_UNIT",
        # Per-connection socket activation peer.
        "REMOTE_ADDR",
        "REMOTE_PORT",
    }
)
"""Variables systemd sets for the daemon itself that must not reach a simulation.

From systemd.exec(5), "Environment Variables in Spawned Processes". PATH, LANG,
USER, HOME and the *_DIRECTORY paths are kept: they describe the machine, not
the daemon's link to its service manager.
"""


def scrub_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of env without the variables in SYSTEMD_VARIABLES."""
    return {key: value for key, value in env.items() if key not in SYSTEMD_VARIABLES}


def socket_address(notify_socket: str) -> str | None:
    """Translate a NOTIFY_SOCKET value to an AF_UNIX address, None if unsupported."""
    if notify_socket.startswith(ABSTRACT_PREFIX):
        return "\0" + notify_socket[len(ABSTRACT_PREFIX) :]
    if notify_socket.startswith("/"):
        return notify_socket
    return None


def watchdog_interval_from(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings for process pid, or None when not asked for."""
    try:
        usec = int(environ.get(WATCHDOG_USEC_VAR, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = environ.get(WATCHDOG_PID_VAR)
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    return usec * WATCHDOG_PING_FRACTION / USEC_PER_SECOND


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd reads MONOTONIC_USEC on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // NSEC_PER_USEC


def _one_line(text: str) -> str:
    """Fold newlines, which would end the STATUS= field, into spaces."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; does nothing when unset."""

    def __init__(self, address: str | None = None, watchdog_interval: float | None = None) -> None:
        """Open the datagram socket for address (an AF_UNIX address; None disables)."""
        self.address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._failure_logged = False
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT_SECONDS)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build a notifier from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
        env = os.environ if environ is None else environ
        notify_socket = env.get(NOTIFY_SOCKET_VAR, "")
        if not notify_socket:
            return cls()
        address = socket_address(notify_socket)
        if address is None:
            _log.warning("sd_notify_unsupported_socket", notify_socket=notify_socket)
            return cls()
        interval = watchdog_interval_from(env, os.getpid())
        # The decision, logged: whether the daemon pings is otherwise seen only by its silence.
        _log.info(
            "sd_notify_enabled",
            watchdog_ping_seconds=interval,
            watchdog_usec=env.get(WATCHDOG_USEC_VAR),
            watchdog_pid=env.get(WATCHDOG_PID_VAR),
        )
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        """True while there is a socket to send to."""
        return self._sock is not None

    def ready(self, status: str | None = None) -> None:
        """Tell systemd the daemon serves (READY=1), with an optional STATUS=."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        self.send(*fields)

    def status(self, text: str) -> None:
        """Set the unit's status line (STATUS=)."""
        self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Ping the watchdog (WATCHDOG=1)."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """Announce a configuration reload (RELOADING=1 with MONOTONIC_USEC=)."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, status: str | None = None) -> None:
        """Announce the daemon is on its way out (STOPPING=1), with an optional STATUS=."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        self.send(*fields)

    def send(self, *fields: str) -> None:
        """Send fields as one datagram; never raises, logs the first failure after a success."""
        if self._sock is None or self.address is None:
            return
        payload = "\n".join(fields).encode()
        try:
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                _log.warning(
                    "sd_notify_failed",
                    notify_socket=self.address.replace("\0", ABSTRACT_PREFIX, 1),
                    error=str(exc),
                    fields=[field.partition("=")[0] for field in fields],
                )
        else:
            self._failure_logged = False

    def close(self) -> None:
        """Close the socket; later notifications are dropped."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        """Use as a context manager that closes the socket."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the socket."""
        self.close()
