"""Drives the installed `runsup daemon` as a real process for system tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import kernelclass
import psutil

from supervisor.db import RunRecord, Store
from supervisor.executors.slurm.standin import (
    StandInState,
    end_standin,
    find_standin,
    standin_state,
)
from supervisor.rundir import RECORD_DIRNAME

RUNSUP = Path(sys.executable).parent / "runsup"
TEST_SIM = Path(__file__).parent / "sims" / "testsim.py"
DEFAULT_DEADLINE = 30.0
# The test simulation writes this first, after installing its signal handlers.
READY = {"type": "start", "config": {"total_erlangs": 1, "total_iterations": 3}}
POLL_SECONDS = 0.01
# How long a daemon, a run's group or a stand-in gets to go after being told, at teardown.
STOP_SECONDS = 10.0
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], deadline: float = DEFAULT_DEADLINE) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(POLL_SECONDS)


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is left in the group.

    Zombies do not count: in some sandboxes PID 1 never reaps orphans, so a group whose
    members all died can still answer `killpg(pgid, 0)`.
    """
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


class DaemonHarness:
    """A config file, a database and a runs dir in tmp, and the daemon as a child process."""

    def __init__(self, tmp: Path, *, kernel_class: str | None = None, **settings: Any) -> None:
        """`kernel_class`: run the daemon as on that kernel class (tests/kernelclass.py)."""
        self.tmp = tmp
        self.kernel_class = kernel_class
        self.db_path = tmp / "runs.db"
        self.runs_dir = tmp / "runs"
        self.config = tmp / "config.toml"
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings: dict[str, Any] = {
            "database": str(self.db_path),
            "runs_dir": str(self.runs_dir),
            "max_concurrent_runs": 4,
            "cancel_grace_seconds": 2,
            "rescan_interval_seconds": 0.5,
            **settings,
        }
        self.write_config()
        self.store = Store.open(f"sqlite:///{self.db_path}")

    def write_config(self, extra_templates: str = "") -> None:
        """(Re)write the TOML file; the daemon reads it at start and on SIGHUP."""
        lines = [f"{k} = {json.dumps(v)}" for k, v in self.settings.items()]
        py = json.dumps(sys.executable)
        sim = json.dumps(str(TEST_SIM))
        lines += [
            "[templates.testsim]",
            f'command = [{py}, {sim}, "{{config_path}}"]',
            "[templates.sh]",
            'command = ["/bin/sh", "-c", "exec sh ./script.sh"]',
            extra_templates,
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        """Start `runsup daemon` and wait until it serves."""
        full_env = {**os.environ, **(env or {})}
        full_env.pop("NOTIFY_SOCKET", None)
        self._log = self.log_path.open("ab")
        start_at = self.log_path.stat().st_size
        command = [str(RUNSUP), "--config", str(self.config), "daemon"]
        self.proc = subprocess.Popen(
            kernelclass.wrap(self.kernel_class, command),
            stdout=self._log,
            stderr=self._log,
            env=full_env,
        )
        if wait_ready:
            proc = self.proc

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"daemon exited with {proc.returncode}:\n{self.log_text()}"
                    )
                return self._logged("daemon_ready", start_at)

            try:
                wait_for("daemon_ready in the daemon's log", ready)
            except BaseException:
                # A fixture that calls start() before its `yield` never reaches its teardown.
                self._end_daemon()
                raise

    def _logged(self, event: str, start_at: int = 0) -> bool:
        with self.log_path.open("rb") as fh:
            fh.seek(start_at)
            return event.encode() in fh.read()

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's log events so far, parsed, in order (lines that are not JSON skipped)."""
        events = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
        return events

    def wait_logged(
        self, event: str, deadline: float = DEFAULT_DEADLINE, **fields: Any
    ) -> dict[str, Any]:
        """Wait until the daemon logged `event` with these field values; that event."""

        def find() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.log_events()
                    if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
                ),
                None,
            )

        return wait_for(f"{event} {fields} in the daemon's log", find, deadline)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEFAULT_DEADLINE) -> int:
        """Signal the daemon and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the daemon (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEFAULT_DEADLINE)

    def wait_exit(self, timeout: float = DEFAULT_DEADLINE) -> int:
        """Wait for the daemon to exit by itself (e.g. at an armed crash point)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def submit(self, config: dict[str, Any] | None = None, template: str = "testsim") -> str:
        """Queue a run through the store, as any program may."""
        return self.store.submit(template, json.dumps(config or {})).id

    def run(self, run_id: str) -> RunRecord:
        """The run's row now."""
        return self.store.get(run_id)

    def wait_status(
        self, run_id: str, statuses: Iterable[str], deadline: float = DEFAULT_DEADLINE
    ) -> RunRecord:
        """Wait until the run has one of these statuses."""
        wanted = set(statuses)
        return wait_for(
            f"run {run_id} to reach {sorted(wanted)}",
            lambda: r if (r := self.run(run_id)).status in wanted else None,
            deadline,
        )

    def wait_set_up(self, run_id: str) -> tuple[int, int]:
        """Wait until the run is RUNNING and its test simulation has set up (it wrote READY)."""
        rec = wait_for(
            f"run {run_id} running and set up",
            lambda: (
                r if (r := self.run(run_id)).status == "RUNNING" and r.total_iterations else None
            ),
        )
        assert rec.pid is not None and rec.pgid is not None
        return rec.pid, rec.pgid

    def wait_final(self, run_id: str, deadline: float = DEFAULT_DEADLINE) -> RunRecord:
        """Wait until the run has ended."""
        return self.wait_status(run_id, {"COMPLETED", "FAILED", "CANCELLED"}, deadline)

    def _end_daemon(self) -> None:
        """SIGTERM (the daemon detaches from its runs and exits), SIGKILL if it does not."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(DEFAULT_DEADLINE)

    def close(self) -> None:
        """Stop the daemon if it runs, end what its runs left behind, close the store."""
        self._end_daemon()
        for record in self.store.list_runs():
            end_run_processes(record)
        self.store.close()


def end_run_processes(record: RunRecord) -> None:
    """End a run's processes, whatever its status: a cluster run's stand-in is told to go (a
    daemon killed before ending it leaves it waiting), a RUNNING local run's group gets
    SIGTERM, then SIGKILL."""
    if record.external_id and record.run_dir:
        standin = find_standin(record.external_id, Path(record.run_dir) / RECORD_DIRNAME)
        if standin is not None and standin_state(standin) is StandInState.ALIVE:
            end_standin(standin, timeout=STOP_SECONDS)
        return
    if not record.pgid or record.status != "RUNNING":
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while group_alive(record.pgid) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        os.killpg(record.pgid, signal.SIGKILL)
