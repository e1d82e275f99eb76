"""The one exception root of the project, and its few branches."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SupervisorError):
    """The configuration file or a RUNSUP_* variable is wrong."""


class NotFoundError(SupervisorError):
    """A run id that is not in the database."""


class ValidationError(SupervisorError):
    """Input (a submitted run, a database row) that cannot be accepted."""


class LaunchError(SupervisorError):
    """A run's command could not be started."""


class LaunchCancelled(LaunchError):
    """A launch was cancelled before its run started (a queued job removed from the queue)."""


class CapError(SupervisorError):
    """A run's memory cap cannot be set up, entered or cleaned up."""


class DatabaseError(SupervisorError):
    """The database cannot be opened or used."""


class DatabaseBusy(DatabaseError):
    """Another program held the database's write lock past our wait: try again later."""
