"""One run's life as the loop drives it: explicit phases and the one place that moves them.

    RUNNING --cancel, timeout, or the simulation left processes behind--> TERMINATING
    TERMINATING --grace passed--> KILLING
    RUNNING | TERMINATING | KILLING --exited and its group is empty--> EXITED
    EXITED --the final status is committed--> SETTLED

The state machine decides; it sends nothing and writes nothing. Its methods return actions
(signals to send, rows to mark) that the loop carries out, so every decision can be tested with
a fake clock and no processes (tests/unit/test_runstate.py).

Why a run is being stopped is kept as the first cause that asked (`StopCause`): a run cancelled
shortly before its timeout, and still in its grace period when the timeout passes, ends
CANCELLED, because the cancel came first; a run that timed out and is cancelled during its grace
ends FAILED "timeout".
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import StrEnum

from supervisor.executors.base import ExitStatus


class Phase(StrEnum):
    """Where a run is in its life, as the loop sees it."""

    RUNNING = "running"
    TERMINATING = "terminating"  # SIGTERM sent to its group; SIGKILL once the grace is over
    KILLING = "killing"  # SIGKILL sent; waiting for the group to be gone
    EXITED = "exited"  # ended and its group is empty: its final status is being written
    SETTLED = "settled"  # its final status is committed: the loop forgets it


class StopCause(StrEnum):
    """Why the daemon stops a run; the first one wins."""

    CANCEL = "cancel requested"
    TIMEOUT = "timeout"
    LEFTOVERS = "the simulation exited; stopping what it left in its group"


_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.RUNNING: frozenset({Phase.TERMINATING, Phase.EXITED}),
    Phase.TERMINATING: frozenset({Phase.KILLING, Phase.EXITED}),
    Phase.KILLING: frozenset({Phase.EXITED}),
    Phase.EXITED: frozenset({Phase.SETTLED}),
    Phase.SETTLED: frozenset(),
}


@dataclass(frozen=True)
class SendSignal:
    """Signal the run's process group."""

    signal: int
    why: str


@dataclass(frozen=True)
class MarkTimedOut:
    """Persist that the run is being stopped for its timeout (survives a daemon restart)."""


Action = SendSignal | MarkTimedOut
# SendSignal.why of the warning before a time limit (the run is not being stopped).
CHECKPOINT_WHY = "checkpoint: the time limit is near"


class RunState:
    """The phases of one run, its stop cause and its exit status; pure (no I/O, no clock)."""

    def __init__(
        self,
        *,
        grace_seconds: float,
        timeout_at: float | None,
        cause: StopCause | None = None,
        stop_leftovers: bool = True,
        checkpoint_at: float | None = None,
        checkpoint_signal: int | None = None,
    ) -> None:
        """`timeout_at` on the monotonic clock; `cause` when a restarted daemon finds one.

        `stop_leftovers` False (a run another program started): processes its leader left in
        the group are waited for, not signalled. `checkpoint_signal` goes to the group once at
        `checkpoint_at` (SPEC section 15: a warning before the time limit; the run goes on).
        """
        self.checkpoint_at = checkpoint_at if checkpoint_signal is not None else None
        self.checkpoint_signal = checkpoint_signal
        self.phase = Phase.RUNNING
        self.stop_leftovers = stop_leftovers
        self.grace_seconds = grace_seconds
        self.timeout_at = timeout_at
        self.cause: StopCause | None = None
        self.cancel_requested = False
        self.exit: ExitStatus | None = None
        self.term_sent_at: float | None = None
        self._pending_cause = cause

    # -- the one place phases change --

    def _move(self, to: Phase) -> None:
        if to not in _MOVES[self.phase]:
            raise ValueError(f"a run cannot go from {self.phase} to {to}")
        self.phase = to

    # -- events --

    def start(self, now: float) -> list[Action]:
        """The run is tracked; a cause found in its row (after a restart) acts at once."""
        cause, self._pending_cause = self._pending_cause, None
        if cause is None:
            return []
        if cause is StopCause.CANCEL:
            self.cancel_requested = True
        return self._terminate(cause, now)

    def request_cancel(self, now: float) -> list[Action]:
        """Someone asked for a cancel: SIGTERM now unless the run is already being stopped."""
        if self.exit is not None:
            return []  # it ended by itself before the request was seen
        self.cancel_requested = True
        if self.phase is Phase.RUNNING:
            return self._terminate(StopCause.CANCEL, now)
        return []

    def on_exit(self, status: ExitStatus, now: float, *, group_alive: bool) -> list[Action]:
        """The simulation (the group's leader) ended; stop what it left in its group."""
        if self.exit is not None:
            return []
        self.exit = status
        if group_alive and self.phase is Phase.RUNNING and self.stop_leftovers:
            return self._terminate(StopCause.LEFTOVERS, now)
        return []

    def tick(self, now: float) -> list[Action]:
        """Deadlines: the checkpoint warning, the run's timeout, then the end of the grace
        after SIGTERM."""
        actions: list[Action] = []
        if (
            self.phase is Phase.RUNNING
            and self.exit is None
            and self.checkpoint_at is not None
            and self.checkpoint_signal is not None
            and now >= self.checkpoint_at
        ):
            self.checkpoint_at = None  # once an attempt
            actions.append(SendSignal(self.checkpoint_signal, CHECKPOINT_WHY))
        return actions + self._stop_deadlines(now)

    def _stop_deadlines(self, now: float) -> list[Action]:
        if (
            self.phase is Phase.RUNNING
            and self.exit is None
            and self.timeout_at is not None
            and now >= self.timeout_at
        ):
            return self._terminate(StopCause.TIMEOUT, now)
        if (
            self.phase is Phase.TERMINATING
            and self.term_sent_at is not None
            and now >= self.term_sent_at + self.grace_seconds
        ):
            self._move(Phase.KILLING)
            return [SendSignal(signal.SIGKILL, "the grace period after SIGTERM is over")]
        return []

    def group_gone(self) -> bool:
        """The run ended and nothing is left of its group: its outcome can be decided now."""
        if self.exit is None or self.phase in (Phase.EXITED, Phase.SETTLED):
            return False
        self._move(Phase.EXITED)
        return True

    def settled(self) -> None:
        """Its final status is committed."""
        self._move(Phase.SETTLED)

    def _terminate(self, cause: StopCause, now: float) -> list[Action]:
        if self.phase is not Phase.RUNNING:
            return []
        self._move(Phase.TERMINATING)
        self.cause = cause
        self.term_sent_at = now
        actions: list[Action] = [MarkTimedOut()] if cause is StopCause.TIMEOUT else []
        return [*actions, SendSignal(signal.SIGTERM, cause.value)]

    # -- what the loop needs to know --

    @property
    def timed_out(self) -> bool:
        """The timeout, not a cancel, was the first reason to stop the run."""
        return self.cause is StopCause.TIMEOUT

    @property
    def cancelled(self) -> bool:
        """A cancel asked before the run ended and before any timeout: it ends CANCELLED."""
        return self.cancel_requested and not self.timed_out

    def next_deadline(self) -> float | None:
        """When tick() has something to do next (monotonic), or None."""
        if self.phase is Phase.RUNNING and self.exit is None:
            due = [t for t in (self.checkpoint_at, self.timeout_at) if t is not None]
            return min(due, default=None)
        if self.phase is Phase.TERMINATING and self.term_sent_at is not None:
            return self.term_sent_at + self.grace_seconds
        return None
