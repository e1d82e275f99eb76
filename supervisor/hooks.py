"""on_finish hooks (SPEC section 13): what a hook is called with, and a small pool that runs them.

The loop hands a finished run to `HookRunner.submit` and goes on at once; a few worker threads
run the hooks (the process work is in executors/local/hookproc.py) and put what happened in a
queue the loop drains with `HookRunner.done()`. No thread here touches the database: the loop
records `hook_done_at` itself. A hanging hook holds one worker until its timeout; a flood of
finished runs waits in the job queue, never in the loop.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from supervisor import rundir
from supervisor.db import RunRecord
from supervisor.executors.local.hookproc import HookResult, run_hook
from supervisor.notify import scrub_environment

log = structlog.get_logger(__name__)

# At most this many hooks run at once; more wait their turn (a hook never delays a run).
MAX_CONCURRENT_HOOKS = 4
# How much of a hook's output goes to the daemon's log.
HOOK_OUTPUT_LOG_BYTES = 4096


@dataclass(frozen=True)
class HookCall:
    """One hook to run for one run."""

    run_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    timeout: float


@dataclass(frozen=True)
class HookDone:
    """A hook that ended (however), for the loop to record."""

    call: HookCall
    result: HookResult


def hook_call(
    record: RunRecord,
    argv: Sequence[str],
    *,
    runs_dir: Path,
    config_format: str,
    timeout: float,
    base_env: Mapping[str, str] | None = None,
) -> HookCall:
    """The hook's argument list (placeholders filled) and environment for a final run."""
    run_dir = Path(record.run_dir) if record.run_dir else runs_dir / record.id
    values = {
        "run_id": record.id,
        "run_dir": str(run_dir),
        "config_path": str(rundir.config_path(run_dir, config_format)),
        "progress_path": str(rundir.progress_path(run_dir)),
        "python": sys.executable,
        "status": record.status,
    }
    env = scrub_environment(os.environ if base_env is None else base_env)
    env.update(hook_environment(record, run_dir))
    cwd = run_dir if run_dir.is_dir() else runs_dir
    filled = tuple(arg.format_map(values) for arg in argv)
    return HookCall(record.id, filled, env, cwd, timeout)


def hook_environment(record: RunRecord, run_dir: Path) -> dict[str, str]:
    """The RUNSUP_* variables of SPEC section 13 (empty when a value is unknown)."""
    duration = ""
    if record.started_at is not None and record.completed_at is not None:
        duration = f"{max(0.0, (record.completed_at - record.started_at).total_seconds()):.3f}"
    return {
        "RUNSUP_RUN_ID": record.id,
        "RUNSUP_STATUS": record.status,
        "RUNSUP_EXIT_CODE": _text(record.exit_code),
        "RUNSUP_EXIT_SIGNAL": _text(record.exit_signal),
        "RUNSUP_RUN_NAME": record.name or "",
        "RUNSUP_TEMPLATE": record.template,
        "RUNSUP_RUN_DIR": str(run_dir),
        "RUNSUP_ERROR_MESSAGE": record.error_message or "",
        "RUNSUP_DURATION_SECONDS": duration,
    }


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


class HookRunner:
    """Runs HookCalls on up to MAX_CONCURRENT_HOOKS worker threads."""

    def __init__(self, wake: Callable[[], None], workers: int = MAX_CONCURRENT_HOOKS) -> None:
        self._wake = wake
        self._workers = workers
        self._jobs: queue.SimpleQueue[HookCall] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[HookDone] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, call: HookCall) -> None:
        """Queue a hook; returns at once."""
        if len(self._threads) < self._workers:
            thread = threading.Thread(target=self._work, name="runsup-hook", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._jobs.put(call)

    def done(self) -> list[HookDone]:
        """Hooks that ended since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def _work(self) -> None:
        while True:
            call = self._jobs.get()
            log.info("hook_started", run_id=call.run_id, argv=list(call.argv))
            try:
                result = run_hook(
                    call.argv,
                    env=call.env,
                    cwd=call.cwd,
                    timeout=call.timeout,
                    output_limit=HOOK_OUTPUT_LOG_BYTES,
                )
            except Exception as exc:  # a worker must outlive any one hook
                result = HookResult(error=f"{type(exc).__name__}: {exc}")
            _log_result(call, result)
            self._done.put(HookDone(call, result))
            self._wake()


def _log_result(call: HookCall, result: HookResult) -> None:
    fields = {
        "run_id": call.run_id,
        "exit_code": result.exit_code,
        "exit_signal": result.exit_signal,
        "timed_out": result.timed_out,
        "seconds": round(result.seconds, 3),
        "output": result.output.decode("utf-8", errors="replace"),
        "output_bytes": result.output_bytes,
    }
    if result.error is not None:
        log.error("hook_not_started", run_id=call.run_id, error=result.error)
    elif result.timed_out:
        log.warning("hook_timed_out", timeout_seconds=call.timeout, **fields)
    elif result.exit_code != 0:
        log.warning("hook_failed", **fields)
    else:
        log.info("hook_finished", **fields)
