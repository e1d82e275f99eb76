"""Time as the loop reads it: a clock that never jumps for deadlines, UTC for timestamps."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Protocol

from supervisor.db import utcnow


class Clock(Protocol):
    """Time as the loop reads it; tests pass their own."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (deadlines)."""
        ...

    def utcnow(self) -> datetime:
        """The wall clock, UTC (only for what is compared with stored timestamps)."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def utcnow(self) -> datetime:
        """The current UTC time."""
        return utcnow()
