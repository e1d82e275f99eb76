"""Which live process stands for a run another program started (issue 20, defect 8)."""

from __future__ import annotations

import os
import subprocess

from supervisor.executors.local.foreign import find_foreign


def test_without_started_at_a_reused_group_number_is_not_taken() -> None:
    """The row names a leader that is gone and a group number that a new, unrelated group now
    has; with NULL started_at nothing ties that group to the run. Before the fix any live
    member of the group was taken for the run's (and would have been signalled)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert os.getpgid(other.pid) == other.pid
        found = find_foreign(gone.pid, other.pid, started_at=None, start_ticks=None)
        assert found is None
        # The process the row names, alive and in the row's group, still stands for the run.
        named = find_foreign(other.pid, other.pid, started_at=None, start_ticks=None)
        assert named is not None and named.pid == other.pid
    finally:
        other.kill()
        other.wait()
