"""How a run ends (SPEC section 6): from what happened to status, exit fields and words. Pure."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from supervisor.signames import signal_name
from supervisor.states import RunStatus

# Bounds, so that a simulation cannot flood the database through its error text.
ERROR_MESSAGE_MAX_CHARS = 4000
LOG_TAIL_LINES = 12

# Signals people and programs send to ask a run to stop: such an end is a cancellation.
CANCEL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

# Outcome kinds, as `retry_on` names them (SPEC section 11); an exit code N is "exit:N".
KIND_SIGNAL = "signal"
KIND_LOST = "lost"
KIND_NODE_FAILURE = "node_failure"
KIND_TIMEOUT = "timeout"
KIND_OUT_OF_MEMORY = "out_of_memory"
KIND_PREEMPTED = "preempted"


@dataclass(frozen=True)
class Outcome:
    """A run's final status and what goes with it into the row and its event."""

    status: RunStatus
    exit_code: int | None
    exit_signal: int | None
    error_message: str | None
    reason: str
    # The outcome's name in a template's `retry_on` (SPEC section 11): "signal", "lost",
    # "timeout", "exit:N", ... (see supervisor.queue.rules); None for what is never retried.
    kind: str | None = None


def bound(text: str, limit: int = ERROR_MESSAGE_MAX_CHARS) -> str:
    """Keep the head and the tail of an over-long text, marking the cut."""
    if len(text) <= limit:
        return text
    half = (limit - 20) // 2
    return f"{text[:half]}\n[... cut ...]\n{text[-half:]}"


def _detail(last_error: str | None, log_tail: str | None) -> str:
    if last_error:
        return f": {last_error.strip()}"
    if log_tail and log_tail.strip():
        return f"; last lines of the log:\n{log_tail.rstrip()}"
    return ""


def classify_exit(
    *,
    exit_code: int | None,
    exit_signal: int | None,
    cancel_requested: bool,
    timed_out: bool,
    timeout_seconds: float | None = None,
    last_error: str | None = None,
    log_tail: str | None = None,
) -> Outcome:
    """The outcome of a run whose process ended with `exit_code` or `exit_signal`."""
    how = (
        f"killed by {signal_name(exit_signal)}"
        if exit_signal is not None
        else f"exited with code {exit_code}"
    )
    if timed_out:
        limit = f" of {timeout_seconds:g} s" if timeout_seconds else ""
        message = f"timeout: the run exceeded its time limit{limit} and was stopped ({how})"
        return Outcome(RunStatus.FAILED, exit_code, exit_signal, message, "timeout", KIND_TIMEOUT)
    if cancel_requested:
        message = f"cancelled on request ({how})"
        return Outcome(RunStatus.CANCELLED, exit_code, exit_signal, message, "cancel requested")
    if exit_signal is None and exit_code == 0:
        return Outcome(RunStatus.COMPLETED, 0, None, None, "exit code 0")
    if exit_signal is not None:
        return _by_signal(exit_signal, last_error, log_tail)
    message = bound(f"exited with code {exit_code}{_detail(last_error, log_tail)}")
    reason = f"exit code {exit_code}"
    return Outcome(RunStatus.FAILED, exit_code, None, message, reason, f"exit:{exit_code}")


def _by_signal(number: int, last_error: str | None, log_tail: str | None) -> Outcome:
    name = signal_name(number)
    if number in CANCEL_SIGNALS:
        message = f"cancelled: ended by {name} sent by another process"
        return Outcome(RunStatus.CANCELLED, None, number, message, f"ended by {name}")
    if number == signal.SIGKILL:
        message = (
            "killed by SIGKILL that the supervisor did not send "
            "(possibly the kernel's out-of-memory killer; see `dmesg` or `journalctl -k`)"
        )
    else:
        message = f"crashed: killed by {name}"
    message = bound(message + _detail(last_error, log_tail))
    return Outcome(RunStatus.FAILED, None, number, message, f"killed by {name}", KIND_SIGNAL)


OUT_OF_MEMORY = "out of memory"
_SIZE_UNITS = ("", "K", "M", "G", "T")


def format_size(size: int) -> str:
    """Bytes in the configuration's notation (powers of 1024): 8589934592 -> "8G"."""
    value = float(size)
    unit = 0
    while value >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text}{_SIZE_UNITS[unit]}"


def out_of_memory_message(cap_bytes: int, peak_bytes: int | None) -> str:
    """A FAILED run's error_message when its cap killed it (SPEC section 6)."""
    peak = "unknown" if peak_bytes is None else format_size(peak_bytes)
    return (
        f"{OUT_OF_MEMORY}: killed at its memory_max of {format_size(cap_bytes)} "
        f"({cap_bytes} bytes); peak {peak}"
    )


def out_of_memory(cap_bytes: int, peak_bytes: int | None) -> Outcome:
    """Killed by the kernel for passing its memory cap (SPEC section 6)."""
    message = out_of_memory_message(cap_bytes, peak_bytes)
    return Outcome(
        RunStatus.FAILED, None, signal.SIGKILL, message, OUT_OF_MEMORY, KIND_OUT_OF_MEMORY
    )


CLUSTER_VERDICTS = {
    "node_failure": "node failure: the cluster lost the node the run ran on",
    "vanished": "lost: the cluster has no record of the job any more (purged, no accounting)",
    "preempted": "preempted: the cluster took the job's node for another job",
}
# The verdict's outcome kind, as `retry_on` names it (anything else: "lost").
_VERDICT_KINDS = {"node_failure": KIND_NODE_FAILURE, "preempted": KIND_PREEMPTED}


def cluster_failure(verdict: str, detail: str | None = None) -> Outcome:
    """The cluster lost the run (SPEC section 6): a node failure, or a job without a record."""
    message = CLUSTER_VERDICTS.get(verdict, f"the cluster ended the job: {verdict}")
    if detail:
        message += f" ({detail})"
    kind = _VERDICT_KINDS.get(verdict, KIND_LOST)
    return Outcome(RunStatus.FAILED, None, None, bound(message), verdict, kind)


CHECKPOINTED = "checkpointed"


def checkpointed(exit_code: int) -> Outcome:
    """The attempt exited with the template's checkpoint_exit_code (SPEC section 15): it saved
    a checkpoint and asks to be started again. Not a failure; the run goes on."""
    message = f"checkpointed: exited with code {exit_code} to be started again"
    return Outcome(RunStatus.PENDING, exit_code, None, message, CHECKPOINTED, CHECKPOINTED)


FOREIGN_UNKNOWN = "exit status unknown: started by another program"


def foreign_end(*, completed_ok: bool, last_error: str | None, cancelled: bool = False) -> Outcome:
    """A run another program started, once its whole group is gone (SPEC section 3)."""
    if cancelled:
        message = f"cancelled on request ({FOREIGN_UNKNOWN})"
        return Outcome(RunStatus.CANCELLED, None, None, message, "cancel requested")
    if completed_ok:
        return Outcome(RunStatus.COMPLETED, None, None, None, "progress says complete, exit 0")
    message = FOREIGN_UNKNOWN + (f"; its last error: {last_error}" if last_error else "")
    return Outcome(RunStatus.FAILED, None, None, bound(message), "exit status unknown")


def lost(reason: str) -> Outcome:
    """A run whose exit status cannot be known (say why)."""
    return Outcome(RunStatus.FAILED, None, None, bound(reason), "exit status lost", KIND_LOST)


def not_started(reason: str) -> Outcome:
    """A run that could not be started."""
    return Outcome(
        RunStatus.FAILED, None, None, bound(f"could not start: {reason}"), "launch failed"
    )
