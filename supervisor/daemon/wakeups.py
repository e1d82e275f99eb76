"""What wakes the loop: the tags of its selector's file descriptors, and test crash points."""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger(__name__)

# Crash points for fault-injection tests; inert unless this variable names one.
CRASH_POINT_VARIABLE = "RUNSUP_TEST_CRASH_POINT"

# Selector tags: what a ready file descriptor means.
_WAKE = "wake"
_EXIT = "exit"
_LAUNCH = "launch"
_LEFTOVER = "leftover"


def crash_point(name: str) -> None:
    """Die at once, as a SIGKILL would, if a test armed this point (does nothing otherwise)."""
    if os.environ.get(CRASH_POINT_VARIABLE) == name:
        log.warning("crash_point_reached", point=name)
        os.kill(os.getpid(), signal.SIGKILL)
