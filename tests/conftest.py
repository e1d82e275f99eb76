"""Shared fixtures: a store on a temporary SQLite file, the installed `runsup` command,
helper Python processes driven line by line over pipes, and the log as JSON lines."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kernelclass
import pytest
import structlog
from hypothesis import settings as hypothesis_settings

from supervisor.db import Store
from supervisor.logs import configure_logging

# Property tests check logic, not speed: Hypothesis's per-example deadline (200 ms) turns a
# busy machine into a failure (seen at a load average of 9). Speeds belong in bench/.
hypothesis_settings.register_profile("runsup", deadline=None)
hypothesis_settings.load_profile("runsup")

# The command installed next to the interpreter running the tests (the venv's bin/).
RUNSUP = Path(sys.executable).parent / "runsup"
RUNSUP_TIMEOUT_SECONDS = 60
WORKER_TIMEOUT_SECONDS = 30.0
# Variables that would point a command at a real configuration, database or state dir.
ISOLATED_VARIABLES = (
    "RUNSUP_CONFIG",
    "RUNSUP_DATABASE",
    "RUNSUP_RUNS_DIR",
    "RUNSUP_MAX_CONCURRENT",
    "STATE_DIRECTORY",
    "XDG_STATE_HOME",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)


# The Slurm test clusters' fixtures (slurm_cluster, slurm_cluster_accounting, ...).
pytest_plugins = ("slurm_fixtures", "leaks", "tiers")


def pytest_configure(config: pytest.Config) -> None:
    """RUNSUP_TEST_KERNEL_CLASS=none|nogroup: the whole session (the tests' own executors and
    every daemon and command they start) runs as on that kernel class (tests/kernelclass.py)."""
    kernel_class = os.environ.get(kernelclass.ENV_VAR)
    if kernel_class:
        kernelclass.install(kernel_class)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file."""
    return f"sqlite:///{path}"


def isolated_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without RUNSUP_*/systemd variables, with HOME and XDG_STATE_HOME under `home`."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_VARIABLES}
    env["HOME"] = str(home)
    env["XDG_STATE_HOME"] = str(home / "state")
    env.update(extra or {})
    return env


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file that does not exist yet."""
    return tmp_path / "runs.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    """The SQLAlchemy URL of `db_path`."""
    return sqlite_url(db_path)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store on a fresh file, schema at head."""
    opened = Store.open(db_url)
    yield opened
    opened.close()


@dataclass
class Runsup:
    """Runs the installed `runsup` with HOME and XDG_STATE_HOME in a temporary directory."""

    home: Path
    env: dict[str, str]
    command: Path = RUNSUP

    @property
    def state_dir(self) -> Path:
        """Where the default database and runs directory live for this environment."""
        return self.home / "state" / "run-supervisor"

    @property
    def db_path(self) -> Path:
        """The default database file (unless RUNSUP_DATABASE or a config says otherwise)."""
        return self.state_dir / "runs.db"

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = RUNSUP_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.command), *args],
            env={**self.env, **(env or {})},
            cwd=cwd or self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def runsup(tmp_path: Path) -> Runsup:
    """The installed command, isolated from the real home and configuration."""
    home = tmp_path / "home"
    home.mkdir()
    return Runsup(home=home, env=isolated_env(home))


class PythonWorker:
    """A `python -c CODE ARGS...` child that talks in lines: we write to its stdin, read its stdout.

    Runs the code as a script, so it needs nothing importable from the tests (works with any
    pytest import mode and with multiprocessing-unfriendly modules).
    """

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._buffer = b""

    def send(self, line: str = "") -> None:
        """Write one line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float = WORKER_TIMEOUT_SECONDS) -> str:
        """The child's next stdout line; fails the test if none comes within `timeout`."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line from the child in {timeout} s (have {self._buffer!r})"
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                assert chunk, (
                    f"child closed stdout (have {self._buffer!r}, exit {self.proc.poll()})"
                )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def finish(self, timeout: float = WORKER_TIMEOUT_SECONDS) -> int:
        """Close the child's stdin and wait for it; its exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Stop the child if it still runs (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def python_worker() -> Iterator[Callable[..., PythonWorker]]:
    """Starts PythonWorker children; any still running are killed at teardown."""
    started: list[PythonWorker] = []

    def start(code: str, *args: str) -> PythonWorker:
        worker = PythonWorker(code, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


class JsonLog:
    """structlog configured as the daemon does it, writing JSON lines to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("w", buffering=1)  # line-buffered: each event is on disk
        configure_logging(stream=self._fh)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every event called `name` logged so far, parsed, in order."""
        self._fh.flush()
        parsed = [json.loads(line) for line in self.path.read_text().splitlines()]
        return [event for event in parsed if event["event"] == name]

    def close(self) -> None:
        """Put structlog back to its defaults and close the file."""
        structlog.reset_defaults()
        self._fh.close()


@pytest.fixture
def json_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonLog]:
    """The log of this test (library code included) as JSON lines; see JsonLog.events."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)  # no syslog prefix on the lines
    log = JsonLog(tmp_path / "structlog.jsonl")
    yield log
    log.close()
