"""What the client raises and warns about; every error is a SupervisorError."""

from __future__ import annotations

from supervisor.errors import SupervisorError


class RunFailed(SupervisorError):
    """A run asked for its results ended without completing."""

    def __init__(self, run_id: str, status: str, error_message: str | None) -> None:
        self.run_id = run_id
        self.status = status
        self.error_message = error_message
        why = f": {error_message.splitlines()[0]}" if error_message else ""
        super().__init__(f"run {run_id} ended {status}{why}")


class ResultsError(SupervisorError):
    """A run completed but its results file is missing or cannot be used."""


class WaitTimeout(SupervisorError, TimeoutError):
    """wait() reached its timeout before the runs ended (they go on)."""


class ResultsWarning(UserWarning):
    """A run's results could not be read; its cells were left empty (the message says why)."""


class NoDaemonWarning(UserWarning):
    """No daemon has served the database lately: submitted runs wait until one does."""
