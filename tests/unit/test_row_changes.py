"""The row changes that name a run's process: each writes exactly the columns it did before the
mapping moved into one place (changes.process_columns)."""

from __future__ import annotations

from supervisor.db.changes import foreign_identity_change, running_change, standin_change
from supervisor.executors.base import ProcessRecord
from supervisor.states import RunStatus

LOCAL = ProcessRecord(
    pid=100, pgid=100, start_ticks=7, boot_id="boot", keeper_pid=99, keeper_start_ticks=6
)
CLUSTER = ProcessRecord(
    pid=200,
    pgid=200,
    start_ticks=8,
    boot_id="boot2",
    keeper_pid=199,
    keeper_start_ticks=5,
    external_id="4242",
    host="node7",
)
IDENTITY = {
    "pid": 100,
    "pgid": 100,
    "pid_start_ticks": 7,
    "boot_id": "boot",
    "keeper_pid": 99,
    "keeper_start_ticks": 6,
}


def test_running_change_writes_the_identity_run_dir_and_start() -> None:
    change = running_change("a" * 12, LOCAL, run_dir="/runs/a", reason="launched")
    values = dict(change.values)
    assert values.pop("started_at") == change.at
    # attempt: the row's own, or 1 at a first start (SQL; tests/integration/test_store.py runs it)
    assert "coalesce" in str(values.pop("attempt"))
    assert values == {**IDENTITY, "run_dir": "/runs/a"}
    assert (change.expect, change.to, change.reason) == (
        frozenset({RunStatus.PENDING}),
        RunStatus.RUNNING,
        "launched",
    )


def test_running_change_of_a_cluster_job_writes_its_id_and_node() -> None:
    values = running_change("b" * 12, CLUSTER, run_dir="/runs/b").values
    assert (values["external_id"], values["host"]) == ("4242", "node7")
    assert values["pid_start_ticks"] == 8


def test_standin_change_writes_only_the_new_group_identity() -> None:
    change = standin_change("c" * 12, CLUSTER)
    assert dict(change.values) == {
        "pid": 200,
        "pgid": 200,
        "pid_start_ticks": 8,
        "boot_id": "boot2",
        "keeper_pid": 199,
        "keeper_start_ticks": 5,
    }
    assert (change.expect, change.to) == (frozenset({RunStatus.RUNNING}), None)


def test_foreign_identity_change_writes_start_ticks_and_boot() -> None:
    change = foreign_identity_change("d" * 12, LOCAL)
    assert dict(change.values) == {"pid_start_ticks": 7, "boot_id": "boot"}
    assert (change.expect, change.to) == (frozenset({RunStatus.RUNNING}), None)
