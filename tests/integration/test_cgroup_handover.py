"""supervisor.executors.local.cgroup_handover (the unit's ExecStartPre=+) on a /proc laid out in
a temporary directory whose v1 memory "mount" is a plain folder: which directory it picks, that
it refuses a hierarchy's root, and that it gives the directory and its process lists to the
user. The real thing, under systemd on a v1 hierarchy: tests/system/test_systemd_caps.py."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from supervisor.errors import CapError
from supervisor.executors.local import cgroup_handover

USER = "nobody"


def fake_proc(tmp_path: Path, memory_path: str | None, *, v1: bool = True) -> Path:
    """A /proc with a v1 memory hierarchy mounted at tmp_path/memory (or none)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    mount = tmp_path / "memory"
    lines = [f"30 25 0:27 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"]
    if v1:
        lines.append(f"36 25 0:31 / {mount} rw,relatime - cgroup cgroup rw,memory")
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    cgroup = "0::/system.slice/run-supervisor.service\n"
    if memory_path is not None:
        cgroup = f"4:memory:{memory_path}\n" + cgroup
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def test_picks_the_units_memory_cgroup(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "/system.slice/run-supervisor.service")
    expected = tmp_path / "memory" / "system.slice" / "run-supervisor.service"
    assert cgroup_handover.own_v1_memory_dir(proc) == expected


def test_nothing_to_do_without_a_v1_memory_hierarchy(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, None, v1=False)
    assert cgroup_handover.own_v1_memory_dir(proc) is None
    assert cgroup_handover.hand_over(USER, proc) is None


def test_refuses_the_root_of_the_hierarchy(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "/")
    with pytest.raises(CapError, match="not a unit's own cgroup"):
        cgroup_handover.own_v1_memory_dir(proc)


def test_refuses_an_unknown_user(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "/system.slice/run-supervisor.service")
    with pytest.raises(CapError, match="no such user"):
        cgroup_handover.hand_over("no-such-user-here", proc)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_hands_the_directory_and_its_process_lists_to_the_user(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "/system.slice/run-supervisor.service")
    directory = tmp_path / "memory" / "system.slice" / "run-supervisor.service"
    directory.mkdir(parents=True)
    for name in (*cgroup_handover.HANDED_FILES, "memory.limit_in_bytes"):
        (directory / name).write_text("")
    assert cgroup_handover.hand_over(USER, proc) == directory
    account = pwd.getpwnam(USER)
    for path in (directory, *(directory / name for name in cgroup_handover.HANDED_FILES)):
        assert (path.stat().st_uid, path.stat().st_gid) == (account.pw_uid, account.pw_gid)
    # The unit's own limits stay root's.
    assert (directory / "memory.limit_in_bytes").stat().st_uid == 0


def test_main_never_fails_the_units_start(capsys: pytest.CaptureFixture[str]) -> None:
    # Wherever the tests run, main() either hands over, finds nothing to do, or says why not:
    # never a non-zero status that would keep the daemon from starting.
    assert cgroup_handover.main(["no-such-user-here"]) == 0
    assert "memory cgroup not handed over: no such user" in capsys.readouterr().err
    assert cgroup_handover.main([]) == 2
