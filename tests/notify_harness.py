"""systemd's notification socket, as tests see it: a bound datagram socket, and the daemon
started with NOTIFY_SOCKET and WATCHDOG_* set as systemd would set them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon_harness import RUNSUP, DaemonHarness

NOTIFY_DEADLINE_SECONDS = 20.0
RECV_BYTES = 65536
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True)
class Notification:
    """One datagram: its fields in order, and when it arrived (monotonic seconds)."""

    fields: tuple[tuple[str, str], ...]
    at: float

    def get(self, key: str) -> str | None:
        """The value of a field, None if absent."""
        return next((value for name, value in self.fields if name == key), None)

    def has(self, key: str, value: str = "1") -> bool:
        """True when the datagram carries key=value."""
        return self.get(key) == value


class NotifySocket:
    """A bound AF_UNIX datagram socket, as systemd's notification socket is."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind("\0" + abstract)
            self.address = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.address = str(path)
        self.received: list[Notification] = []

    def _receive(self, timeout: float) -> Notification | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            return None
        fields = tuple(
            (name, value)
            for line in data.decode().split("\n")
            if line
            for name, _, value in [line.partition("=")]
        )
        note = Notification(fields, time.monotonic())
        self.received.append(note)
        return note

    def wait_for(
        self,
        what: str,
        check: Callable[[Notification], bool],
        deadline: float = NOTIFY_DEADLINE_SECONDS,
    ) -> Notification:
        """The next notification for which check holds; earlier ones are kept in received."""
        end = time.monotonic() + deadline
        while (remaining := end - time.monotonic()) > 0:
            note = self._receive(remaining)
            if note is not None and check(note):
                return note
        raise AssertionError(f"no {what} notification in {deadline} s; got {self.received}")

    def collect(self, seconds: float) -> list[Notification]:
        """Everything that arrives in the next `seconds`."""
        end = time.monotonic() + seconds
        got: list[Notification] = []
        while (remaining := end - time.monotonic()) > 0:
            note = self._receive(remaining)
            if note is not None:
                got.append(note)
        return got

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class NotifiedDaemon:
    """`runsup daemon` as a child process with systemd's notification variables set."""

    def __init__(self, harness: DaemonHarness) -> None:
        self.harness = harness
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], *, watchdog_pid_is_self: bool = False) -> None:
        """Start the daemon with env added; optionally WATCHDOG_PID set to its own pid."""
        full_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        full_env.update(env)
        argv = [str(RUNSUP), "--config", str(self.harness.config), "daemon"]
        if watchdog_pid_is_self:
            # exec keeps the shell's pid, so $$ is the daemon's pid, known before it starts.
            argv = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"]
            argv += [str(RUNSUP), "--config", str(self.harness.config), "daemon"]
        with self.harness.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=full_env)
        self.harness.proc = self.proc  # the harness kills it at teardown if still running

    def signal(self, sig: int) -> None:
        """Send sig to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = NOTIFY_DEADLINE_SECONDS) -> int:
        """Wait for the daemon to exit; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)
