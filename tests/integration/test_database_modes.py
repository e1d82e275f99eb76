"""A new database file's mode: group read-write where its folder is group-writable (the
service's setgid state directory), the umask's elsewhere; SQLite's -wal/-shm follow it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.db import Store
from supervisor.db.engine import create_database_file


@pytest.fixture
def umask_027() -> Iterator[None]:
    """The unit's UMask=0027 for the duration of a test."""
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_group_writable_folder_gives_group_read_write_to_db_wal_and_shm(
    tmp_path: Path, umask_027: None
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o2770)
    db = state / "runs.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        store.counts()
        assert mode(db) == 0o660
        assert mode(state / "runs.db-wal") == 0o660
        assert mode(state / "runs.db-shm") == 0o660
    finally:
        store.close()


def test_private_folder_keeps_the_umask(tmp_path: Path, umask_027: None) -> None:
    db = tmp_path / "runs.db"
    tmp_path.chmod(0o750)
    Store.open(f"sqlite:///{db}").close()
    assert mode(db) == 0o640


def test_existing_file_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o770)
    db = tmp_path / "runs.db"
    db.touch()
    db.chmod(0o600)
    create_database_file(db)
    assert mode(db) == 0o600


def test_missing_folder_is_left_for_sqlite_to_report(tmp_path: Path) -> None:
    create_database_file(tmp_path / "absent" / "runs.db")
    assert not (tmp_path / "absent").exists()
