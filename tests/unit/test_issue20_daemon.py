"""Issue 20's defects in the daemon's own decisions: a real SQLite file, the fake executor."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from daemon_fakes import FakeClock, FakeExecutor, from_outside, make_daemon, step

from supervisor import rundir
from supervisor.daemon import Daemon
from supervisor.daemon.launcher import SCHEDULING_LOOKAHEAD
from supervisor.daemon.readopt import CLAIM_RECHECK_SECONDS
from supervisor.db import Claim, Store, final_change
from supervisor.executors.base import ExitStatus, StillStarting
from supervisor.executors.slurm.executor import SlurmExecutor
from supervisor.notify import Notifier
from supervisor.outcome import Outcome
from supervisor.progress.logcap import MIN_CAP_BYTES
from supervisor.settings import (
    LOCAL_EXECUTOR,
    ExecutorSettings,
    HooksSettings,
    Settings,
    Template,
)
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


def test_a_claim_whose_recheck_fails_keeps_what_it_holds(
    daemon: tuple[Daemon, FakeExecutor, FakeClock],
) -> None:
    """Defect 12: before the fix a recheck that raised dropped the claim, and its slot and
    resources stopped counting (another run could start in its place)."""
    d, executor, clock = daemon
    run_id = d.store.submit("sim", "{}").id
    assert d.store.claim_many([run_id]) == [run_id]
    executor.found[run_id] = StillStarting("keeper starting")
    d.recover()
    assert run_id in d.readoption.claims_held
    del executor.found[run_id]  # the next look raises (KeyError in the executor)
    clock.advance(CLAIM_RECHECK_SECONDS + 1)
    d.readoption.check_claims(clock.monotonic())
    assert run_id in d.readoption.claims_held
    assert d.readoption.next_deadline() is not None


def cluster_daemon(tmp_path: Path) -> tuple[Daemon, FakeExecutor, FakeExecutor, FakeClock]:
    """A daemon with the local fake executor and a 'cluster' one taking one job at a time."""
    local_t = Template(name="sim", command=("/bin/true",))
    cluster_t = Template(name="job", command=("/bin/true",), executor="cluster")
    settings = Settings(
        database=str(tmp_path / "runs.db"),
        runs_dir=tmp_path / "runs",
        max_concurrent_runs=1,
        templates={"sim": local_t, "job": cluster_t},
    )
    settings.runs_dir.mkdir()
    store = Store.open(settings.database_url, busy_timeout_ms=50, write_attempts=1)
    clock = FakeClock()
    local = FakeExecutor(clock)
    cluster = FakeExecutor(clock, name="cluster", max_in_flight=1)
    d = Daemon(
        settings,
        store,
        executors={LOCAL_EXECUTOR: local, "cluster": cluster},
        notifier=Notifier(),
        clock=clock,
    )
    return d, local, cluster, clock


def close_daemon(d: Daemon) -> None:
    for run in list(d.runs.values()):
        d.supervision.forget(run)
    for executor in d.services.executors.values():
        executor.close()
    d.store.close()


def test_claims_waiting_on_a_cluster_count_against_max_submitted(tmp_path: Path) -> None:
    """Defect 12: after a restart, a claim still submitting to the cluster takes its place
    in max_submitted; before the fix a second job was submitted beside it."""
    d, _, cluster, _ = cluster_daemon(tmp_path)
    try:
        first = d.store.submit("job", "{}").id
        assert d.store.claim_many([Claim(first, executor="cluster")]) == [first]
        cluster.found[first] = StillStarting("sbatch not answered yet")
        d.recover()
        second = d.store.submit("job", "{}").id
        sync(d)
        assert second not in cluster.launches
        assert d.store.get(second).launch_claimed_at is None
    finally:
        close_daemon(d)


def test_a_full_cluster_does_not_hold_back_local_runs(tmp_path: Path) -> None:
    """Defect 4: the cluster is at max_submitted and its jobs lead the queue; before the fix
    the pickup took those rows, the plan dropped them, and the local run never started."""
    d, local, cluster, _ = cluster_daemon(tmp_path)
    try:
        first = d.store.submit("job", "{}").id
        sync(d)
        assert first in cluster.launches
        behind = [d.store.submit("job", "{}").id for _ in range(3)]
        mine = d.store.submit("sim", "{}").id
        sync(d)
        assert mine in local.launches
        assert not set(behind) & set(cluster.launches)
    finally:
        close_daemon(d)


def test_full_local_slots_do_not_hold_back_cluster_runs(tmp_path: Path) -> None:
    """Defect 4: local slots are full and many local runs wait ahead of a cluster job; before
    the fix the pickup looked only at local rows (want + 32) and the job waited."""
    d, local, cluster, _ = cluster_daemon(tmp_path)
    try:
        first = d.store.submit("sim", "{}").id
        sync(d)
        assert first in local.launches
        ahead = [d.store.submit("sim", "{}").id for _ in range(SCHEDULING_LOOKAHEAD + 8)]
        job = d.store.submit("job", "{}").id
        sync(d)
        assert job in cluster.launches
        assert not set(ahead) & set(local.launches)
    finally:
        close_daemon(d)


def test_a_foreign_run_does_not_get_the_templates_timeout(tmp_path: Path) -> None:
    """Defect 8: a run another program started is never stopped for our template's
    timeout_seconds (SPEC section 3); before the fix it got SIGTERM at the timeout."""
    gen = make_daemon(tmp_path, timeout=100.0)
    d, executor, clock = next(gen)
    try:
        record = d.store.submit("sim", "{}")
        handle = executor.begin_launch_handle_for(record.id)
        run = d.supervision.track(
            record, handle, tmp_path / "runs" / record.id, d.settings.templates["sim"], foreign=True
        )
        assert run.state.timeout_at is None
        clock.advance(1000.0)
        step(d)
        assert handle.signals == []
    finally:
        next(gen, None)


def write_config(path: Path, d: Daemon, executor: str) -> None:
    """The daemon's config file: its database and runs dir, a job template on `hpc`."""
    path.write_text(
        f'database = "{d.settings.database}"\n'
        f'runs_dir = "{d.settings.runs_dir}"\n'
        "max_concurrent_runs = 1\n"
        '[templates.sim]\ncommand = ["/bin/true"]\n'
        '[templates.job]\ncommand = ["/bin/true"]\nexecutor = "hpc"\n' + executor
    )


def reload(d: Daemon) -> None:
    d._on_signal(signal.SIGHUP, None)
    step(d)


def test_sighup_builds_new_and_changed_executors(tmp_path: Path) -> None:
    """Defect 5: before the fix a reload kept the executors of the start: a new
    [executors.hpc] was missing (its runs failed "not available"), and changed partition,
    max_submitted and poll_interval_seconds were ignored."""
    d, _, _, _ = cluster_daemon(tmp_path)
    config = tmp_path / "config.toml"
    d.config_file = str(config)
    try:
        write_config(config, d, '[executors.hpc]\nkind = "slurm"\npartition = "a"\n')
        reload(d)
        built = d.services.executors["hpc"]
        assert isinstance(built, SlurmExecutor) and built.config.partition == "a"
        write_config(
            config,
            d,
            '[executors.hpc]\nkind = "slurm"\npartition = "b"\nmax_submitted = 7\n'
            "poll_interval_seconds = 3\n",
        )
        reload(d)
        rebuilt = d.services.executors["hpc"]
        assert isinstance(rebuilt, SlurmExecutor) and rebuilt is not built
        assert rebuilt.config.partition == "b"
        assert rebuilt.max_in_flight == 7 and rebuilt.poll_interval == 3
    finally:
        close_daemon(d)


def test_sighup_keeps_a_replaced_executor_for_its_runs_in_flight(tmp_path: Path) -> None:
    """Defect 5: an executor rebuilt while one of its launches is in flight keeps serving that
    launch (polled until it ends, then closed); new launches go to the new instance."""
    d, _, cluster, _ = cluster_daemon(tmp_path)
    config = tmp_path / "config.toml"
    d.config_file = str(config)
    try:
        old_cfg = ExecutorSettings(name="cluster", kind="slurm", runs_dir=d.settings.runs_dir)
        d.settings = replace(d.settings, executors={"cluster": old_cfg})
        run_id = d.store.submit("job", "{}").id
        sync(d)
        assert run_id in cluster.launches
        config.write_text(
            f'database = "{d.settings.database}"\nruns_dir = "{d.settings.runs_dir}"\n'
            "max_concurrent_runs = 1\n"
            '[templates.sim]\ncommand = ["/bin/true"]\n'
            '[templates.job]\ncommand = ["/bin/true"]\nexecutor = "cluster"\n'
            '[executors.cluster]\nkind = "slurm"\npartition = "new"\n'
        )
        reload(d)
        assert isinstance(d.services.executors["cluster"], SlurmExecutor)
        launch = cluster.launches[run_id]
        launch.report()
        step(d)
        assert d.store.get(run_id).status == "RUNNING"
        launch.handle.end(ExitStatus(0, None))
        step(d)
        step(d)
        assert d.store.get(run_id).status == "COMPLETED"
        assert cluster.closed
    finally:
        close_daemon(d)


def test_a_cluster_runs_log_is_never_cut_from_here(tmp_path: Path) -> None:
    """Defect 13: a cluster job's log (written on another node) is left to the cluster; the
    local run's log of the same size is cut. Before the fix both were copy-and-truncated."""
    d, local, cluster, clock = cluster_daemon(tmp_path)
    try:
        d.settings = replace(d.settings, max_log_bytes=MIN_CAP_BYTES)
        job = d.store.submit("job", "{}").id
        mine = d.store.submit("sim", "{}").id
        sync(d)
        cluster.launches[job].report()
        local.launches[mine].report()
        step(d)
        assert job in d.runs and mine in d.runs
        size = MIN_CAP_BYTES * 4
        logs = {}
        for run_id in (job, mine):
            path = rundir.log_path(d.runs[run_id].run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (size - 1) + b"\n")
            logs[run_id] = path
        clock.advance(d.settings.rescan_interval_seconds + 1)
        step(d)
        assert logs[mine].stat().st_size < size
        assert logs[job].stat().st_size == size
    finally:
        close_daemon(d)
