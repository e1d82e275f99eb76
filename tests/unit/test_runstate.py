"""Each run's state machine, with times the test chooses (no processes, no clock)."""

from __future__ import annotations

import signal

import pytest

from supervisor.daemon.runstate import (
    CHECKPOINT_WHY,
    MarkTimedOut,
    Phase,
    RunState,
    SendSignal,
    StopCause,
)
from supervisor.executors.base import ExitStatus

GRACE = 10.0
TIMEOUT_AT = 100.0
TERM = SendSignal(signal.SIGTERM, StopCause.CANCEL.value)


def state() -> RunState:
    return RunState(grace_seconds=GRACE, timeout_at=TIMEOUT_AT)


def test_a_run_that_ends_by_itself_goes_straight_to_exited() -> None:
    s = state()
    assert s.on_exit(ExitStatus(0, None), 5.0, group_alive=False) == []
    assert s.group_gone()
    assert s.phase is Phase.EXITED and not s.cancelled and not s.timed_out
    s.settled()
    assert s.phase is Phase.SETTLED


def test_cancel_then_timeout_during_the_grace_stays_a_cancel() -> None:
    s = state()
    assert s.request_cancel(TIMEOUT_AT - 1) == [TERM]
    assert s.tick(TIMEOUT_AT + 1) == [], "the timeout must not fire under a cancel"
    assert s.cancelled and not s.timed_out
    kill = s.tick(TIMEOUT_AT - 1 + GRACE)
    assert kill == [SendSignal(signal.SIGKILL, "the grace period after SIGTERM is over")]
    assert s.phase is Phase.KILLING


def test_timeout_then_cancel_during_the_grace_stays_a_timeout() -> None:
    s = state()
    actions = s.tick(TIMEOUT_AT)
    assert actions == [MarkTimedOut(), SendSignal(signal.SIGTERM, StopCause.TIMEOUT.value)]
    assert s.request_cancel(TIMEOUT_AT + 1) == []
    assert s.timed_out and not s.cancelled


def test_deadlines_follow_the_phase() -> None:
    s = state()
    assert s.next_deadline() == TIMEOUT_AT
    s.request_cancel(20.0)
    assert s.next_deadline() == 20.0 + GRACE
    s.tick(20.0 + GRACE)
    assert s.next_deadline() is None


def test_leftovers_after_the_exit_are_terminated_then_killed() -> None:
    s = state()
    actions = s.on_exit(ExitStatus(0, None), 1.0, group_alive=True)
    assert actions == [SendSignal(signal.SIGTERM, StopCause.LEFTOVERS.value)]
    assert s.phase is Phase.TERMINATING
    assert s.request_cancel(2.0) == [], "a cancel after the run ended changes nothing"
    assert not s.cancelled
    assert s.group_gone() and s.phase is Phase.EXITED


def test_a_cause_found_in_the_row_acts_at_start() -> None:
    s = RunState(grace_seconds=GRACE, timeout_at=None, cause=StopCause.TIMEOUT)
    assert s.start(0.0) == [MarkTimedOut(), SendSignal(signal.SIGTERM, "timeout")]
    assert s.timed_out


def test_phases_only_move_forward() -> None:
    s = state()
    s.on_exit(ExitStatus(0, None), 1.0, group_alive=False)
    s.group_gone()
    s.settled()
    with pytest.raises(ValueError):
        s.settled()


def test_the_checkpoint_signal_comes_once_before_the_timeout() -> None:
    """SPEC section 15 locally: the warning at timeout - checkpoint_seconds, the run goes on,
    then at the timeout it is stopped as without it."""
    s = RunState(
        grace_seconds=GRACE,
        timeout_at=TIMEOUT_AT,
        checkpoint_at=TIMEOUT_AT - 20,
        checkpoint_signal=signal.SIGUSR1,
    )
    assert s.next_deadline() == TIMEOUT_AT - 20
    assert s.tick(TIMEOUT_AT - 21) == []
    assert s.tick(TIMEOUT_AT - 20) == [SendSignal(signal.SIGUSR1, CHECKPOINT_WHY)]
    assert s.phase is Phase.RUNNING
    assert s.tick(TIMEOUT_AT - 10) == []  # once
    assert s.next_deadline() == TIMEOUT_AT
    actions = s.tick(TIMEOUT_AT)
    assert actions == [MarkTimedOut(), SendSignal(signal.SIGTERM, StopCause.TIMEOUT.value)]
    assert s.timed_out


def test_no_checkpoint_signal_after_the_run_ended_or_was_cancelled() -> None:
    s = RunState(
        grace_seconds=GRACE, timeout_at=TIMEOUT_AT, checkpoint_at=50.0, checkpoint_signal=10
    )
    s.request_cancel(40.0)
    assert all(a != SendSignal(10, CHECKPOINT_WHY) for a in s.tick(60.0))
