"""The launch and handle of a cluster run: what they answer from the executor's last look."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from supervisor.errors import LaunchCancelled, LaunchError
from supervisor.executors.base import ProcessRecord
from supervisor.executors.slurm.handles import JobSlot, SlurmLaunch, SlurmRunHandle
from supervisor.executors.slurm.parsing import JobInfo, JobState


class FakeWorker:
    """Records what the handles ask of the executor (pure logic: no thread, no Slurm)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.told: list[str] = []
        self.signals: list[tuple[str, int]] = []
        self.removed: list[str] = []
        self.ended: list[str] = []
        self.forgotten: list[str] = []

    def tell(self, run_id: str) -> None:
        self.told.append(run_id)

    def send_signal(self, job_id: str, sig: int) -> None:
        self.signals.append((job_id, sig))

    def cancel_queued(self, slot: JobSlot) -> None:
        self.removed.append(slot.run_id)

    def end_standin(self, slot: JobSlot) -> None:
        self.ended.append(slot.run_id)

    def forget(self, slot: JobSlot) -> None:
        self.forgotten.append(slot.run_id)


RECORD = ProcessRecord(10, 10, 5, "boot", 10, 5, external_id="42", host="node1")


def _slot(tmp_path: Path, state: JobState | None, code: int | None = None) -> JobSlot:
    info = None if state is None else JobInfo("42", state, exit_code=code, source="squeue")
    return JobSlot(run_id="r1", record_dir=tmp_path, job_id="42", info=info)


def test_a_queued_job_is_removed_only_after_asking_the_cluster(tmp_path: Path) -> None:
    """The last query said PENDING, but it may be seconds old: the launch never answers "it
    never starts" itself; the executor asks the cluster, and the launch reports what it said
    (issue 21: a job that had just started was recorded "cancelled before it started")."""
    worker = FakeWorker()
    slot = _slot(tmp_path, JobState.PENDING)
    launch = SlurmLaunch(worker, slot)
    assert launch.cancel() is False
    assert worker.removed == ["r1"]
    assert launch.cancel() is False and worker.removed == ["r1"]  # asked once
    assert launch.poll() is None  # not decided yet
    slot.removed = True  # the cluster said: still queued, now removed
    with pytest.raises(LaunchCancelled, match="before it started"):
        launch.poll()


def test_a_job_not_yet_submitted_is_removed_once_it_is(tmp_path: Path) -> None:
    worker = FakeWorker()
    slot = JobSlot(run_id="r1", record_dir=tmp_path)
    assert SlurmLaunch(worker, slot).cancel() is False
    assert slot.cancelled


def test_a_failed_submit_after_a_cancel_is_a_cancel(tmp_path: Path) -> None:
    worker = FakeWorker()
    slot = JobSlot(run_id="r1", record_dir=tmp_path)
    launch = SlurmLaunch(worker, slot)
    launch.cancel()
    slot.error = "could not submit the job: sbatch did not answer within 30 s"
    with pytest.raises(LaunchCancelled):
        launch.poll()


@pytest.mark.parametrize("state", [JobState.RUNNING, JobState.COMPLETED])
def test_a_job_seen_started_is_cancelled_as_a_run(tmp_path: Path, state: JobState) -> None:
    worker = FakeWorker()
    assert SlurmLaunch(worker, _slot(tmp_path, state, 0)).cancel() is False
    assert worker.removed == []


def test_a_launch_reports_its_job_id_and_its_failure(tmp_path: Path) -> None:
    worker = FakeWorker()
    slot = JobSlot(run_id="r1", record_dir=tmp_path)
    launch = SlurmLaunch(worker, slot)
    assert launch.poll() is None and launch.external_id is None
    slot.job_id = "42"
    assert launch.poll() is None and launch.external_id == "42"
    slot.error = "sbatch refused the job: Invalid partition name specified"
    with pytest.raises(LaunchError, match="Invalid partition"):
        launch.poll()
    assert worker.forgotten == ["r1"]


def test_a_job_that_ended_before_it_was_seen_running_is_settled_next(tmp_path: Path) -> None:
    worker = FakeWorker()
    slot = _slot(tmp_path, JobState.COMPLETED, 0)
    slot.handle = SlurmRunHandle(worker, slot, RECORD)
    assert SlurmLaunch(worker, slot).poll() is slot.handle
    assert worker.told == ["r1"]


def test_the_handle_follows_the_clusters_answer(tmp_path: Path) -> None:
    worker = FakeWorker()
    slot = _slot(tmp_path, None)
    handle = SlurmRunHandle(worker, slot, RECORD)
    assert handle.exit_status() is None and handle.group_alive()  # not asked yet: unknown
    slot.info = JobInfo("42", JobState.RUNNING, source="squeue")
    assert handle.signal_group(signal.SIGTERM)
    assert worker.signals == [("42", signal.SIGTERM)]
    slot.info = JobInfo("42", JobState.FAILED, exit_code=3, source="squeue")
    status = handle.exit_status()
    assert status is not None and status.exit_code == 3
    assert not handle.group_alive()
    assert not handle.signal_group(signal.SIGKILL)  # over: nothing to signal
    handle.release()
    handle.close()
    assert (worker.ended, worker.forgotten) == (["r1"], [])
