"""The pure parts of supervisor.executors.local.cgroups: parsers, names, and detection on a
/proc laid out in a temporary directory (a machine shape this one does not have)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import outcome
from supervisor.errors import CapError
from supervisor.executors.local import cgroups
from supervisor.executors.local.cgroups import CgroupVersion

MOUNTINFO = """\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
36 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:32 /sub /sys/fs/cgroup/cpu\\040x rw,relatime - cgroup cgroup rw,cpu,cpuacct
"""

PROC_CGROUP_HYBRID = """\
9:name=systemd:/
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/user.slice/session-1.scope
"""


def test_parse_mountinfo_keeps_cgroup_mounts_with_roots_and_controllers() -> None:
    mounts = cgroups.parse_mountinfo(MOUNTINFO)
    assert [(m.fstype, str(m.point)) for m in mounts] == [
        ("cgroup2", "/sys/fs/cgroup/unified"),
        ("cgroup", "/sys/fs/cgroup/memory"),
        ("cgroup", "/sys/fs/cgroup/cpu x"),  # octal escape undone
    ]
    assert "memory" in mounts[1].options
    assert mounts[2].root == "/sub"


def test_parse_mountinfo_skips_garbage_lines() -> None:
    assert cgroups.parse_mountinfo("nonsense\n1 2 3\n - cgroup2\n") == []


def test_parse_proc_cgroup_finds_v2_and_v1_memory_paths() -> None:
    assert cgroups.parse_proc_cgroup(PROC_CGROUP_HYBRID) == (
        "/user.slice/session-1.scope",
        "/process_api/abc",
    )
    assert cgroups.parse_proc_cgroup("0::/system.slice/x.service\n") == (
        "/system.slice/x.service",
        None,
    )
    assert cgroups.parse_proc_cgroup("garbage\n") == (None, None)


def test_parse_keyed_reads_memory_events_and_oom_control() -> None:
    events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert cgroups.parse_keyed(events)["oom_kill"] == 1
    control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\nbroken line here\n"
    assert cgroups.parse_keyed(control) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 2}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max\n", None), ("67108864\n", 67108864), ("9223372036854771712\n", None)],
)
def test_parse_limit(text: str, expected: int | None) -> None:
    assert cgroups.parse_limit(text) == expected


def test_names_round_trip_and_foreign_names_are_not_ours() -> None:
    assert cgroups.cgroup_name("0123456789ab") == "runsup-0123456789ab"
    assert cgroups.run_id_of("runsup-0123456789ab") == "0123456789ab"
    for foreign in ("runsup-daemon", "runsup-0123456789AB", "runsup-0123", "user.slice"):
        assert cgroups.run_id_of(foreign) is None
    with pytest.raises(CapError):
        cgroups.cgroup_name("../../etc")


def lay_out_proc(root: Path, mountinfo: str, own: str, proc_cgroups: str = "") -> Path:
    """A fake /proc with self/mountinfo, self/cgroup and cgroups."""
    (root / "self").mkdir(parents=True)
    (root / "self" / "mountinfo").write_text(mountinfo)
    (root / "self" / "cgroup").write_text(own)
    (root / "cgroups").write_text(proc_cgroups)
    return root


def test_detect_without_any_cgroup_mount_says_why_and_how(tmp_path: Path) -> None:
    proc = lay_out_proc(tmp_path, "25 30 0:22 / /sys rw - sysfs sysfs rw\n", "0::/\n")
    support = cgroups.detect(proc)
    assert not support.enforced
    assert support.version is None
    assert "no cgroup v2 hierarchy is mounted" in support.reason
    assert "no cgroup v1 memory hierarchy is mounted" in support.reason
    assert "Delegate=yes" in support.reason
    assert "as root" in support.reason


def test_detect_v2_with_delegated_memory_controller(tmp_path: Path) -> None:
    tree = tmp_path / "cg"
    unit = tree / "system.slice" / "run-supervisor.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.controllers").write_text("cpu io memory pids\n")
    (unit / "cgroup.subtree_control").write_text("\n")
    (unit / "cgroup.procs").write_text("\n")  # the daemon is elsewhere (e.g. a leaf already)
    mountinfo = f"32 31 0:27 / {tree} rw - cgroup2 cgroup2 rw\n"
    proc = lay_out_proc(tmp_path / "proc", mountinfo, "0::/system.slice/run-supervisor.service\n")
    support = cgroups.detect(proc)
    assert support.version is CgroupVersion.V2
    assert support.base == unit
    assert support.mount == tree


def test_detect_v2_from_inside_the_daemon_leaf_uses_its_parent(tmp_path: Path) -> None:
    tree = tmp_path / "cg"
    unit = tree / "svc"
    (unit / cgroups.DAEMON_LEAF).mkdir(parents=True)
    (unit / "cgroup.controllers").write_text("memory\n")
    (unit / "cgroup.subtree_control").write_text("memory\n")
    (unit / "cgroup.procs").write_text("")
    mountinfo = f"32 31 0:27 / {tree} rw - cgroup2 cgroup2 rw\n"
    proc = lay_out_proc(tmp_path / "proc", mountinfo, f"0::/svc/{cgroups.DAEMON_LEAF}\n")
    assert cgroups.detect(proc).base == unit


def test_detect_v2_refuses_a_cgroup_shared_with_other_processes(tmp_path: Path) -> None:
    tree = tmp_path / "cg"
    scope = tree / "session.scope"
    scope.mkdir(parents=True)
    (scope / "cgroup.controllers").write_text("memory\n")
    (scope / "cgroup.subtree_control").write_text("\n")
    (scope / "cgroup.procs").write_text("1\n2\n")  # the login shell and friends
    mountinfo = f"32 31 0:27 / {tree} rw - cgroup2 cgroup2 rw\n"
    proc = lay_out_proc(tmp_path / "proc", mountinfo, "0::/session.scope\n")
    support = cgroups.detect(proc)
    assert not support.enforced
    assert "holds other processes" in support.reason


def test_detect_v2_names_a_memory_controller_bound_to_v1(tmp_path: Path) -> None:
    tree = tmp_path / "cg"
    tree.mkdir()
    (tree / "cgroup.controllers").write_text("hugetlb\n")
    (tree / "cgroup.subtree_control").write_text("\n")
    (tree / "cgroup.procs").write_text("1\n")
    mountinfo = f"32 31 0:27 / {tree} rw - cgroup2 cgroup2 rw\n"
    proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t54\t1\n"
    proc = lay_out_proc(tmp_path / "proc", mountinfo, "0::/\n", proc_cgroups)
    support = cgroups.detect(proc)
    assert not support.enforced
    assert "bound to a cgroup v1 hierarchy" in support.reason


def test_a_cgroup_outside_the_mounted_subtree_is_refused(tmp_path: Path) -> None:
    mountinfo = f"32 31 0:27 /other {tmp_path} rw - cgroup2 cgroup2 rw\n"
    proc = lay_out_proc(tmp_path / "proc", mountinfo, "0::/mine\n")
    assert "outside the cgroup v2 mount" in cgroups.detect(proc).reason


def test_a_memory_report_knows_an_oom_kill() -> None:
    assert cgroups.MemoryReport(10, 1, 20).oom_killed
    assert not cgroups.MemoryReport(10, 0, 20).oom_killed


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (512, "512"), (1536, "1.5K"), (8 * 1024**3, "8G"), (3 * 1024**4, "3T")],
)
def test_format_size_speaks_the_configuration_notation(size: int, text: str) -> None:
    assert outcome.format_size(size) == text


def test_out_of_memory_message_starts_as_the_spec_says_and_names_cap_and_peak() -> None:
    message = outcome.out_of_memory_message(64 * 1024**2, 67_100_000)
    assert message == (
        "out of memory: killed at its memory_max of 64M (67108864 bytes); peak 63.99M"
    )
    assert outcome.out_of_memory_message(1024, None).endswith("peak unknown")
