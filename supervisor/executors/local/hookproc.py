"""One on_finish hook as a child process (SPEC section 13): started, read, waited for, killed.

Blocking by design: it runs on a hook worker thread, never on the daemon's loop. The hook gets
a session of its own, so that a timeout kills everything it started; its output is read as it
comes and only the first `output_limit` bytes are kept (a flood costs reading, not memory or
disk); it ends at its exit, even when a child it left behind keeps the output pipe open.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.executors.local.means import detect

READ_CHUNK_BYTES = 64 * 1024
# After a kill, wait at most this long for the kernel to reap the hook.
KILL_WAIT_SECONDS = 5.0
# Without pidfds (Linux before 5.3), how often a hook that went quiet is asked if it exited.
EXIT_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class HookResult:
    """How a hook ended and what it printed (the head of it)."""

    exit_code: int | None = None
    exit_signal: int | None = None
    timed_out: bool = False
    output: bytes = b""
    output_bytes: int = 0  # everything it printed, also what was not kept
    error: str | None = None  # it could not be started
    seconds: float = 0.0


def run_hook(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    output_limit: int,
) -> HookResult:
    """Run the hook to its end or its timeout (then SIGKILL to its whole session)."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        return HookResult(error=f"cannot start {argv[0]}: {exc.strerror or exc}")
    except (ValueError, TypeError) as exc:  # e.g. a NUL byte in an argument
        return HookResult(error=f"cannot start {argv[0]!r}: {exc}")
    assert proc.stdout is not None
    deadline = started + timeout
    head, total, timed_out = _read_until_exit(proc, deadline, output_limit)
    if timed_out:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    code: int | None
    try:
        code = proc.wait(KILL_WAIT_SECONDS if timed_out else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        timed_out = True
        try:
            code = proc.wait(KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
    return HookResult(
        exit_code=code if code is not None and code >= 0 else None,
        exit_signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out,
        output=bytes(head),
        output_bytes=total,
        seconds=time.monotonic() - started,
    )


def _read_until_exit(
    proc: subprocess.Popen[bytes], deadline: float, limit: int
) -> tuple[bytearray, int, bool]:
    """Read the hook's output until it exits (and the pipe is drained) or the deadline passes."""
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    head = bytearray()
    total = 0
    pidfd = os.pidfd_open(proc.pid) if detect().pidfds else None
    exited = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ, "out")
            if pidfd is not None:
                sel.register(pidfd, selectors.EVENT_READ, "exit")
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return head, total, True
                wait = left if pidfd is not None else min(left, EXIT_POLL_SECONDS)
                ready = {key.data for key, _ in sel.select(wait)}
                # poll() reaps it; proc.wait() later returns the code it kept.
                exited = exited or "exit" in ready or (pidfd is None and proc.poll() is not None)
                chunk = _read_some(out)
                if chunk:
                    total += len(chunk)
                    head += chunk[: max(0, limit - len(head))]
                    continue
                # Empty: end of file, or nothing more for now after the hook exited (a child
                # of it may hold the pipe open; its output is not the hook's to wait for).
                if chunk == b"" or exited:
                    return head, total, False
    finally:
        if pidfd is not None:
            os.close(pidfd)
        proc.stdout.close()


def _read_some(fd: int) -> bytes | None:
    """Up to one chunk; b"" at end of file, None when nothing is there yet."""
    try:
        return os.read(fd, READ_CHUNK_BYTES)
    except BlockingIOError:
        return None
