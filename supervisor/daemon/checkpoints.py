"""SPEC section 15 in the daemon: the checkpoint warning before a time limit, and an attempt
that exits with its template's checkpoint_exit_code. Pure decisions; supervision acts."""

from __future__ import annotations

import signal

from supervisor import outcome as outcomes
from supervisor.daemon.runstate import RunState
from supervisor.executors.base import ExitStatus
from supervisor.outcome import Outcome
from supervisor.settings import Template


def warning_at(
    template: Template | None, timeout_at: float | None, *, sent_by_executor: bool
) -> tuple[float | None, int | None]:
    """(when, which signal) the loop warns the run before its time limit; (None, None) when
    there is no warning to send, or the executor has it sent where the run runs (a cluster
    job's own --signal, which also comes while the daemon is down)."""
    if template is None or template.checkpoint_signal is None or timeout_at is None:
        return None, None
    if sent_by_executor:
        return None, None
    number = signal.Signals[f"SIG{template.checkpoint_signal}"]
    return timeout_at - (template.checkpoint_seconds or 0.0), number


def checkpointed(
    template: Template | None, state: RunState, status: ExitStatus
) -> Outcome | None:
    """The `checkpointed` outcome when the attempt exited with the template's
    checkpoint_exit_code by itself: not cancelled (a cancel is never resumed) and not stopped
    for the daemon's time limit."""
    code = template.checkpoint_exit_code if template else None
    if code is None or status.exit_signal is not None or status.exit_code != code:
        return None
    if state.cancel_requested or state.timed_out:
        return None
    return outcomes.checkpointed(code)


def as_plain_exit(out: Outcome) -> Outcome:
    """A checkpointed outcome that cannot go on (its row moved under the daemon): the exit it
    was, as any other code."""
    if out.kind != outcomes.CHECKPOINTED:
        return out
    return outcomes.classify_exit(
        exit_code=out.exit_code, exit_signal=None, cancel_requested=False, timed_out=False
    )
