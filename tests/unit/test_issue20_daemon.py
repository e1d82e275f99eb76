"""Issue 20's defects in the daemon's own decisions: a real SQLite file, the fake executor."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, from_outside, make_daemon, step

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


def sync(d: Daemon) -> None:
    """A pass that also looks at the database."""
    d._next_db_poll = 0.0
    step(d)


def test_a_cancel_for_a_launch_that_fails_is_not_kept(
    daemon: tuple[Daemon, FakeExecutor, FakeClock],
) -> None:
    """Defect 12: before the fix the cancel stayed in `_cancel_seen` for ever."""
    d, executor, _ = daemon
    run_id = d.store.submit("sim", "{}").id
    sync(d)
    with contextlib.closing(from_outside(d)) as outside:
        outside.request_cancel(run_id)
    sync(d)
    assert d.supervision.cancels_waiting() == 1
    executor.launches[run_id].fail("the keeper vanished")
    step(d)
    assert d.store.get(run_id).status == "FAILED"
    assert d.supervision.cancels_waiting() == 0


def test_a_run_whose_row_was_rewritten_under_its_launch_loses_its_cgroup(
    daemon: tuple[Daemon, FakeExecutor, FakeClock],
) -> None:
    """Defect 12: the RUNNING write was refused (another program wrote FAILED meanwhile); the
    run is killed and, once its group is gone, released (its cgroup removed) and forgotten.
    Before the fix it was forgotten at once and never released."""
    d, executor, _ = daemon
    run_id = d.store.submit("sim", "{}").id
    sync(d)
    with contextlib.closing(from_outside(d)) as outside:
        outside.commit_batch(
            [final_change(run_id, RunStatus.FAILED, reason="gui", expect=[RunStatus.PENDING])]
        )
    launch = executor.launches[run_id]
    launch.report()
    step(d)
    step(d)
    assert signal.SIGKILL in launch.handle.signals
    assert launch.handle.released
    assert run_id not in d.runs
    assert d.store.get(run_id).status == "FAILED"
