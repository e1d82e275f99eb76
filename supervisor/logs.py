"""structlog set-up: readable on a terminal, JSON lines otherwise, priorities for journald."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import structlog

# syslog priorities for journald's SyslogLevelPrefix (so `journalctl -p err` works).
SYSLOG_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def under_journald(stream: TextIO, environ: MutableMapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == device and st.st_ino == inode


class _PriorityPrefix:
    """Puts `<N>` before each rendered line so journald files it at the right priority."""

    def __init__(self, renderer: structlog.processors.JSONRenderer) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        level = str(event.get("level", method))
        line = str(self.renderer(logger, method, event))
        return f"<{SYSLOG_PRIORITY.get(level, 6)}>{line}"


def configure_logging(
    *, verbose: bool = False, stream: TextIO | None = None, quiet: bool = False
) -> None:
    """Configure structlog once, for the command line and the daemon (the library never does).

    `quiet`: warnings and errors only (a command whose stdout is its output, e.g. metrics)."""
    import structlog  # here: a short command that never logs does not pay its import

    _DEFERRED.clear()
    out = stream or sys.stderr
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if out.isatty() and not under_journald(out):
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        shared.append(structlog.processors.format_exc_info)
        json_renderer = structlog.processors.JSONRenderer()
        renderer = _PriorityPrefix(json_renderer) if under_journald(out) else json_renderer
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


# configure_logging's arguments while a command has deferred it (configure_on_first_use).
_DEFERRED: dict[str, Any] = {}


def configure_on_first_use(*, quiet: bool = False) -> None:
    """configure_logging(quiet=...) when get_logger is first called: `runsup metrics` logs only
    when finding GPUs does, and structlog's import is a third of the command's start."""
    _DEFERRED.clear()
    _DEFERRED["quiet"] = quiet


def debug_dropped() -> bool:
    """True when a deferred quiet set-up is pending: a debug event would be dropped, so the
    caller may skip it without importing structlog."""
    return bool(_DEFERRED.get("quiet"))


def get_logger(name: str) -> Any:
    """structlog's logger for `name`, after the set-up a command deferred, if any."""
    import structlog

    if _DEFERRED:
        configure_logging(quiet=bool(_DEFERRED["quiet"]))
    return structlog.get_logger(name)
