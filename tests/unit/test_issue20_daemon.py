"""Issue 20's defects in the daemon's own decisions: a real SQLite file, the fake executor."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, from_outside, make_daemon

from supervisor.daemon import Daemon
from supervisor.db import final_change
from supervisor.outcome import Outcome
from supervisor.settings import HooksSettings
from supervisor.states import RunStatus


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, FakeExecutor, FakeClock]]:
    yield from make_daemon(tmp_path)


def test_no_hook_for_a_run_whose_true_outcome_is_still_being_written(
    daemon: tuple[Daemon, FakeExecutor, FakeClock],
) -> None:
    """Defect 9: another program wrote FAILED over a run the daemon is settling; the hook
    waits for the daemon's own outcome (before the fix it ran at once with FAILED)."""
    d, _, _ = daemon
    d.settings = replace(d.settings, hooks=HooksSettings(on_finish=("/bin/true",)))
    outside = from_outside(d)
    try:
        run_id = outside.submit("sim", "{}").id
        outside.commit_batch(
            [final_change(run_id, RunStatus.FAILED, reason="fusion", expect=[RunStatus.PENDING])]
        )
    finally:
        outside.close()
    out = Outcome(RunStatus.COMPLETED, 0, None, None, "exited 0")
    change = final_change(run_id, RunStatus.COMPLETED, reason="exited 0")
    d.supervision.settle_with(run_id, change, out)  # queued, not yet committed
    d.queue.sync()
    assert not d.queue.hooks_pending(run_id)
