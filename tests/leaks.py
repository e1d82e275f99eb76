"""pytest plugin: every process the suite starts carries a marker; none may outlive its owner.

The marker is a variable in the test process's environment while a test (or a fixture wider
than one test) is being set up, run and torn down, so every child inherits it: the daemon,
its simulations, stand-ins, Slurm jobs submitted from it, helper shells. It reads
`<session>/<test node id>` (or `<session>/fixture:<scope>:<name>` for a module- or
session-wide fixture, whose processes may live until that fixture ends).

- After each test (the autouse fixture below, torn down after the test's other fixtures),
  processes that still carry the test's marker are given a moment to go, then killed, and the
  test fails naming them.
- At the end of the session, anything left with the session's marker is killed and the
  suite fails (and the list goes into the tier summary, see tiers.py).

The marker is read from /proc/<pid>/environ: a process that rewrote its environment, or one
started with an environment built from scratch, is not seen: the harnesses pass os.environ on,
or add marker.marker_env() to an environment of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from marker import MARKER_VARIABLE

# Unique per pytest run: processes of an earlier (or a concurrent) session are not ours.
SESSION_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
# How long processes a test ended (a killed daemon's stand-ins, a group sent SIGKILL) may take
# to be gone before they count as left behind: a deadline, not a delay (the wait ends when
# they are gone). A stand-in's end calls scancel; at a load average of 10 that passed 5 s.
LEFTOVER_GRACE_SECONDS = 20.0
# After SIGTERM, how long a swept process gets before SIGKILL.
SWEEP_TERM_SECONDS = 2.0
POLL_SECONDS = 0.05

# The leftovers the session-end check found (tiers.py writes them into its summary).
session_leftovers: list[str] = []


@dataclass(frozen=True)
class Marked:
    """A live process that carries a marker."""

    pid: int
    marker: str
    cmdline: str

    def describe(self) -> str:
        """pid, command line and marker, for a failure message."""
        return f"pid {self.pid} ({self.cmdline}) [{self.marker}]"


def test_marker(nodeid: str) -> str:
    """The marker of one test's processes."""
    return f"{SESSION_ID}/{nodeid}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # gone, or not ours to read
        return None


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return False
    fields = stat.rsplit(b")", 1)
    return len(fields) == 2 and fields[1].split()[:1] != [b"Z"]  # zombies are dead


def marked_processes(prefix: str) -> list[Marked]:
    """Live processes (not zombies, not this one) whose marker starts with `prefix`."""
    wanted = f"{MARKER_VARIABLE}={prefix}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        environ = _read(f"/proc/{name}/environ")
        if not environ:
            continue
        for entry in environ.split(b"\0"):
            if entry.startswith(wanted) and _alive(int(name)):
                cmdline = (_read(f"/proc/{name}/cmdline") or b"").replace(b"\0", b" ").strip()
                marker = entry.split(b"=", 1)[1].decode(errors="replace")
                found.append(Marked(int(name), marker, cmdline.decode(errors="replace")[:200]))
                break
    return found


def _signal_all(processes: list[Marked], sig: int) -> None:
    for proc in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)


def wait_gone(prefix: str, timeout: float) -> list[Marked]:
    """Wait up to `timeout` for processes with the marker prefix to be gone; those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = marked_processes(prefix)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_SECONDS)


def sweep(prefix: str) -> list[Marked]:
    """End every process with the marker prefix (SIGTERM, then SIGKILL); those it found."""
    found = marked_processes(prefix)
    if found:
        _signal_all(found, signal.SIGTERM)
        left = wait_gone(prefix, SWEEP_TERM_SECONDS)
        _signal_all(left, signal.SIGKILL)
        wait_gone(prefix, SWEEP_TERM_SECONDS)
    return found


@contextlib.contextmanager
def _marked_as(marker: str) -> Iterator[None]:
    before = os.environ.get(MARKER_VARIABLE)
    os.environ[MARKER_VARIABLE] = marker
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MARKER_VARIABLE, None)
        else:
            os.environ[MARKER_VARIABLE] = before


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Every process started while the test is set up, run and torn down carries its marker."""
    with _marked_as(test_marker(item.nodeid)):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
    """A fixture wider than a test marks its processes as its own (they may outlive the test)."""
    if fixturedef.scope == "function":
        return (yield)
    with _marked_as(f"{SESSION_ID}/fixture:{fixturedef.scope}:{fixturedef.argname}"):
        return (yield)


@pytest.fixture(autouse=True)
def no_processes_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test when a process it started outlives it (after killing it)."""
    yield
    marker = test_marker(request.node.nodeid)
    if not wait_gone(marker, LEFTOVER_GRACE_SECONDS):
        return
    left = sweep(marker)
    if left:
        pytest.fail(
            "processes outlived the test (killed now):\n  "
            + "\n  ".join(p.describe() for p in left),
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the suite when anything it started is still there once every fixture ended."""
    left = wait_gone(f"{SESSION_ID}/", LEFTOVER_GRACE_SECONDS)
    if not left:
        return
    left = sweep(f"{SESSION_ID}/")
    session_leftovers.extend(p.describe() for p in left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("processes left behind by the suite (killed now):", red=True)
        for line in session_leftovers:
            reporter.write_line(f"  {line}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
