"""The daemon's /metrics endpoint (SPEC section 14), served by a child process of its own.

Why a process and not a thread of the daemon: a thread would share the daemon's GIL, and a
flood of scrapes (HTTP parsing, building the text) would then delay every step of the loop
by up to a GIL switch interval each time it wants the lock back. In a process of its own the
server cannot slow the loop but through the CPU scheduler, and it runs niced (SERVER_NICE)
so that the kernel prefers the loop; it reads the database with its own connection and short
read transactions, and at most once per MIN_COLLECT_INTERVAL_SECONDS however many scrape.

Life cycle, with no signal sent by anyone: the daemon keeps the write end of the child's
stdin; the child serves until it reads end-of-file there, which happens when the daemon
closes it at shutdown or dies in any way (the kernel closes it then). The child reports on
stdout one line once it listens, or why it cannot; a port in use makes the daemon refuse to
start (a configured endpoint that is silently missing would be noticed only when a dashboard
goes blank), with one clear line. A server that dies later is logged and started again on
the heartbeat's cadence, at most every RESTART_INTERVAL_SECONDS, without the loop waiting
for it.

Run as `python -m supervisor.metrics.server SPEC_JSON` by the daemon only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import IO

import structlog

from supervisor.errors import SupervisorError
from supervisor.notify import SYSTEMD_VARIABLES
from supervisor.settings import Settings

log = structlog.get_logger(__name__)

# How long the daemon waits at start for the server to say it listens (import and bind).
START_TIMEOUT_SECONDS = 30.0
# How long the daemon waits at shutdown for the server to go once its stdin is closed.
STOP_TIMEOUT_SECONDS = 5.0
# A just-stopped daemon's server may hold the port for a moment: binding is tried this long.
BIND_RETRY_SECONDS = 2.0
BIND_RETRY_DELAY_SECONDS = 0.1
# The server's niceness increment: the supervision loop comes first.
SERVER_NICE = 10
# A server that died is started again at most this often.
RESTART_INTERVAL_SECONDS = 30.0
READY_LINE = "listening"
ERROR_PREFIX = "error: "


@dataclass(frozen=True)
class ServerSpec:
    """What the server process needs: the database, where to listen, what to report."""

    database_url: str
    host: str
    port: int
    config_file: str | None

    def to_json(self) -> str:
        """The spec as the child's one argument."""
        return json.dumps(asdict(self))


class MetricsServer:
    """The daemon's handle on its /metrics server process."""

    def __init__(self, spec: ServerSpec) -> None:
        """Nothing runs before start()."""
        self.spec = spec
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_restart = 0.0
        self._announced = False

    @property
    def where(self) -> str:
        """host:port, for messages."""
        host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
        return f"{host}:{self.spec.port}"

    @classmethod
    def for_settings(cls, settings: Settings) -> MetricsServer | None:
        """The server `[metrics] listen` asks for, or None when it is not set."""
        listen = settings.metrics.listen
        if listen is None:
            return None
        config = str(settings.config_file) if settings.config_file is not None else None
        return cls(ServerSpec(settings.database_url, listen.host, listen.port, config))

    def start(self) -> None:
        """Start the server and wait until it listens; SupervisorError (one line) if it cannot.

        Only at the daemon's start, before its loop runs: waiting here blocks nothing.
        """
        proc = self._spawn()
        assert proc.stdout is not None
        self._proc = proc
        line = _read_line(proc.stdout, START_TIMEOUT_SECONDS)
        if line != READY_LINE:
            self.stop()
            why = line.removeprefix(ERROR_PREFIX) if line else "the server did not start"
            raise SupervisorError(f"[metrics] listen = {self.where!r}: {why}")
        self._announced = True
        log.info("metrics_serving", address=self.where, pid=proc.pid)

    def check(self, now: float) -> None:
        """On the loop's heartbeat cadence: start the server again if it died, never waiting
        for it (its "listening" line is looked for at the next checks)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._announce(proc)
            return
        if now < self._next_restart:
            return
        assert proc.stdout is not None
        said = _read_line(proc.stdout, 0.0)  # it has exited: whatever it said is there now
        log.error("metrics_server_died", address=self.where, returncode=proc.returncode, said=said)
        self._close_pipes(proc)
        self._next_restart = now + RESTART_INTERVAL_SECONDS
        self._proc = self._spawn()
        self._announced = False

    def _announce(self, proc: subprocess.Popen[bytes]) -> None:
        """Log metrics_serving once a restarted server says it listens (never waits)."""
        if self._announced or proc.stdout is None:
            return
        if _read_line(proc.stdout, 0.0) == READY_LINE:
            self._announced = True
            log.info("metrics_serving", address=self.where, pid=proc.pid)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor.metrics.server", self.spec.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            # The daemon's own systemd variables (NOTIFY_SOCKET...) are not the server's.
            env={k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES},
        )

    def stop(self) -> None:
        """Close the server's stdin (it then exits by itself) and wait for it a moment."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._close_pipes(proc)
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("metrics_server_stop_timeout", pid=proc.pid, timeout_s=STOP_TIMEOUT_SECONDS)

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from the child's stdout, or "" at end-of-file or timeout."""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = max(0.0, deadline - time.monotonic())
        if not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


# -- the child ----------------------------------------------------------------


def serve(spec: ServerSpec) -> int:
    """Serve /metrics until stdin reaches end-of-file (the child's main)."""
    # Ctrl-C in a terminal reaches the whole process group: the daemon decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(SERVER_NICE)
    from prometheus_client import start_http_server

    from supervisor.db import Store
    from supervisor.metrics.collector import CachedCollector, ConfiguredCollector, registry_for
    from supervisor.settings import load_settings

    try:
        store = Store.open(spec.database_url, upgrade=False)
        collector = ConfiguredCollector(store, lambda: load_settings(spec.config_file))
    except SupervisorError as exc:
        return _say(f"{ERROR_PREFIX}{exc}", 1)
    registry = registry_for(CachedCollector(collector))
    deadline = time.monotonic() + BIND_RETRY_SECONDS
    while True:
        try:
            server, _thread = start_http_server(spec.port, addr=spec.host, registry=registry)
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                return _say(f"{ERROR_PREFIX}cannot listen there: {exc.strerror or exc}", 1)
            time.sleep(BIND_RETRY_DELAY_SECONDS)
    _say(READY_LINE, 0)
    while sys.stdin.buffer.read(4096):
        pass  # the daemon never writes; end-of-file means it is gone or done with us
    server.shutdown()
    store.close()
    return 0


def _say(line: str, code: int) -> int:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return code


def main(argv: list[str]) -> int:
    """Entry point: one argument, the ServerSpec as JSON."""
    from supervisor.logs import configure_logging

    # stdout speaks to the daemon; warnings go to stderr (the daemon's log), debug nowhere.
    configure_logging(quiet=True)
    spec = ServerSpec(**json.loads(argv[0]))
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
