"""A process that must not be signalled, and proof that it was not: it records every signal
it catches in a file (all but SIGKILL and SIGSTOP, which cannot be caught: a SIGKILL shows as
its death)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from daemon_harness import wait_for

BYSTANDER = """\
import signal, sys
path = sys.argv[1]

def record(signum, frame):
    with open(path, "a") as fh:
        fh.write(f"{signum}\\n")

for sig in signal.valid_signals():
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        try:
            signal.signal(sig, record)
        except (OSError, ValueError):
            pass
print("ready", flush=True)
while True:
    signal.pause()
"""
# Linux delivers pending standard signals before real-time ones (and Python runs its handlers
# in signal-number order): once this probe is recorded, every standard signal sent to the
# bystander before the probe has been recorded too.
PROBE = signal.SIGRTMIN


class Bystander:
    """A process in a session and group of its own that writes down each signal it gets."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BYSTANDER, str(record)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        """Its pid (== its pgid)."""
        return self.proc.pid

    def _recorded(self) -> list[int]:
        try:
            return [int(line) for line in self.record.read_text().split()]
        except FileNotFoundError:
            return []

    def signals(self) -> list[str]:
        """Every signal it got up to now, by name (SIGKILL as "SIGKILL (dead)")."""
        if self.proc.poll() is not None:
            return [*self._names(), "SIGKILL (dead)"]
        probes = self._recorded().count(PROBE) + 1
        os.kill(self.pid, PROBE)
        wait_for("the probe recorded", lambda: self._recorded().count(PROBE) >= probes)
        return self._names()

    def _names(self) -> list[str]:
        return [signal.Signals(n).name for n in self._recorded() if n != PROBE]

    def close(self) -> None:
        """Kill it and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
