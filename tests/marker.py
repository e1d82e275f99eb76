"""The variable that marks every process the test suite starts (tests/leaks.py sets it)."""

from __future__ import annotations

import os

MARKER_VARIABLE = "RUNSUP_TEST_MARKER"


def marker_env() -> dict[str, str]:
    """The marker as it is now, for an environment built from scratch ({} outside the suite)."""
    value = os.environ.get(MARKER_VARIABLE)
    return {} if value is None else {MARKER_VARIABLE: value}
