"""Signal numbers in words, for messages and logs."""

from __future__ import annotations

import signal


def signal_name(number: int) -> str:
    """SIGTERM for 15; "signal N" if N names no signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
