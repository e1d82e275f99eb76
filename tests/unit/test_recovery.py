"""What each case a restarted daemon finds means for the run's row (recovery.carry_out)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from daemon_fakes import FakeHandle, make_process

from supervisor.daemon import recovery
from supervisor.db import RunRecord
from supervisor.executors.base import (
    Adopted,
    EndedWhileAway,
    ExitStatus,
    FailedToStart,
    Lost,
    NeverStarted,
    ProcessRecord,
    Recovery,
    RunHandle,
    StillStarting,
)

PROC = make_process(4_100_000)


class Host:
    """Records what recovery asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def mark_running(self, record: RunRecord, process: ProcessRecord, reason: str) -> None:
        self.calls.append(("mark_running", process))

    def track(self, record: RunRecord, handle: RunHandle) -> None:
        self.calls.append(("track", handle))

    def settle_offline(self, record: RunRecord, status: ExitStatus) -> None:
        self.calls.append(("settle_offline", status))

    def settle_lost(self, record: RunRecord, why: str) -> None:
        self.calls.append(("settle_lost", why))

    def fail_unstarted(self, record: RunRecord, why: str) -> None:
        self.calls.append(("fail_unstarted", why))

    def release_claim(self, record: RunRecord, why: str) -> None:
        self.calls.append(("release_claim", why))

    def look_again_later(self, record: RunRecord, why: str) -> None:
        self.calls.append(("look_again_later", why))


def row(status: str) -> RunRecord:
    none = {name: None for name in RunRecord.__dataclass_fields__}
    values = {
        **none,
        "id": "0123456789ab",
        "status": status,
        "config_json": "{}",
        "template": "sim",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return RunRecord(**values)


HANDLE = FakeHandle(PROC)
EXIT = ExitStatus(3, None)

CASES: list[tuple[str, Recovery, list[tuple[str, object]]]] = [
    ("RUNNING", Adopted(HANDLE), [("track", HANDLE)]),
    ("PENDING", Adopted(HANDLE), [("mark_running", PROC), ("track", HANDLE)]),
    ("RUNNING", EndedWhileAway(EXIT, PROC), [("settle_offline", EXIT)]),
    ("PENDING", EndedWhileAway(EXIT, PROC), [("mark_running", PROC), ("settle_offline", EXIT)]),
    (
        "PENDING",
        EndedWhileAway(EXIT, None),
        [("fail_unstarted", "the launch ended unrecorded (exit code 3)")],
    ),
    ("RUNNING", Lost("keeper killed", PROC), [("settle_lost", "keeper killed")]),
    ("RUNNING", Lost("keeper killed", PROC, leftover=HANDLE), [("track", HANDLE)]),
    ("PENDING", Lost("machine restarted", None), [("fail_unstarted", "machine restarted")]),
    (
        "PENDING",
        Lost("keeper killed", PROC, leftover=HANDLE),
        [("mark_running", PROC), ("track", HANDLE)],
    ),
    ("PENDING", StillStarting("keeper 1 s old"), [("look_again_later", "keeper 1 s old")]),
    ("PENDING", NeverStarted("no keeper"), [("release_claim", "no keeper")]),
    ("PENDING", FailedToStart("keeper failed"), [("fail_unstarted", "keeper failed")]),
    ("RUNNING", NeverStarted("no keeper"), [("settle_lost", "no keeper")]),
    ("RUNNING", StillStarting("odd"), [("settle_lost", "odd")]),
    ("RUNNING", FailedToStart("keeper failed"), [("settle_lost", "keeper failed")]),
]


@pytest.mark.parametrize(("status", "found", "expected"), CASES)
def test_each_case_means_one_thing(
    status: str, found: Recovery, expected: list[tuple[str, object]]
) -> None:
    host = Host()
    recovery.carry_out(host, row(status), found)
    assert host.calls == expected


def test_process_of_needs_the_whole_identity() -> None:
    full = replace(
        row("RUNNING"),
        pid=PROC.pid,
        pgid=PROC.pgid,
        pid_start_ticks=PROC.start_ticks,
        boot_id=PROC.boot_id,
        keeper_pid=PROC.keeper_pid,
        keeper_start_ticks=PROC.keeper_start_ticks,
    )
    assert recovery.process_of(full) == PROC
    assert recovery.process_of(replace(full, keeper_pid=None)) is None
