"""The decisions of `runsup check` (supervisor.checks), on machines described by their values:
CPU counts, GPU ids, cgroup support, mounts, Slurm answers. The real machine's answers are
checked by tests/system/test_check.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.checks import Status, exit_code
from supervisor.checks.listen import ListenProbe, metrics_check
from supervisor.checks.machine import cpus_check, gpus_check, memory_check
from supervisor.checks.programs import commands_check, hooks_check, program_problem
from supervisor.checks.slurm import Answer, executor_checks, ping_answer, probe_slurm
from supervisor.checks.storage import (
    DirState,
    Mount,
    database_check,
    is_network,
    mount_of,
    parse_mounts,
    runs_dir_check,
)
from supervisor.db.probe import DatabaseProbe
from supervisor.executors.local.cgroups import HOW_TO_ENABLE, CapSupport, CgroupVersion
from supervisor.settings import (
    BUILTIN_TEMPLATES,
    ExecutorSettings,
    HooksSettings,
    ListenAddress,
    MetricsSettings,
    ResourcesSettings,
    Settings,
    Template,
)

GIB = 1024**3
ENFORCED = CapSupport(CgroupVersion.V2, Path("/sys/fs/cgroup/x"), Path("/sys/fs/cgroup"), "v2 at x")
NOT_ENFORCED = CapSupport(None, None, None, f"no memory controller here; {HOW_TO_ENABLE}")
LOCAL_EXT4 = DirState(Path("/srv/runs"), True, None, "ext4", Path("/"))


def settings(*templates: Template, **changes: object) -> Settings:
    """Settings with these templates besides the built-in one."""
    base = Settings(
        database="/srv/runs.db",
        runs_dir=Path("/srv/runs"),
        max_concurrent_runs=2,
        templates={**BUILTIN_TEMPLATES, **{t.name: t for t in templates}},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def template(name: str, **fields: object) -> Template:
    """A local template running /bin/true, with these fields."""
    return Template(name=name, command=("/bin/true",), **fields)  # type: ignore[arg-type]


# -- CPUs, GPUs, memory --------------------------------------------------------------------


def test_cpus_ok_reports_machine_capacity_and_limit() -> None:
    result = cpus_check(settings(), machine_cpus=8)
    assert result.status is Status.OK
    assert dict(result.facts) == {"machine": 8, "capacity": 2, "max_concurrent_runs": 2}


def test_cpus_fail_when_a_template_asks_more_than_the_capacity() -> None:
    result = cpus_check(settings(template("big", cpus=3)), machine_cpus=2)
    assert result.status is Status.FAIL
    assert "big asks 3" in result.detail
    assert result.fix is not None and "[resources] cpus" in result.fix


def test_cpus_warn_when_the_configured_capacity_exceeds_the_machine() -> None:
    result = cpus_check(settings(resources=ResourcesSettings(cpus=16)), machine_cpus=4)
    assert result.status is Status.WARN


def test_gpus_none_is_fine_until_a_local_template_asks() -> None:
    assert gpus_check(settings(template("cpu-only", gpus=0)), ()).status is Status.OK
    result = gpus_check(settings(template("trainer", gpus=1)), ())
    assert result.status is Status.FAIL
    assert "trainer asks 1" in result.detail
    assert "no NVIDIA driver" in result.detail


def test_gpus_on_a_cluster_executor_do_not_count_here() -> None:
    remote = template("remote", gpus=4, executor="cluster")
    assert gpus_check(settings(remote), ()).status is Status.OK


def test_gpus_fail_when_a_template_asks_more_than_listed() -> None:
    result = gpus_check(
        settings(template("pair", gpus=2), resources=ResourcesSettings(gpus=("0",))), ("0",)
    )
    assert result.status is Status.FAIL
    assert result.fix is not None and "list more GPU ids" in result.fix


def test_memory_caps_fail_only_when_a_local_template_needs_them() -> None:
    capped = template("capped", memory_max=GIB)
    needed = memory_check(settings(capped), NOT_ENFORCED, 8 * GIB, outside_systemd=False)
    assert needed.status is Status.FAIL
    assert "capped set memory_max" in needed.detail
    assert needed.fix == HOW_TO_ENABLE
    unneeded = memory_check(settings(), NOT_ENFORCED, 8 * GIB, outside_systemd=True)
    assert unneeded.status is Status.WARN
    assert unneeded.fix is not None and "this shell's cgroup" in unneeded.fix
    enforced = memory_check(settings(capped), ENFORCED, 8 * GIB, outside_systemd=False)
    assert enforced.status is Status.OK
    assert enforced.facts["cgroup_version"] == "v2"


def test_memory_max_above_what_runs_may_reserve_fails() -> None:
    huge = template("huge", memory_max=16 * GIB)
    result = memory_check(settings(huge), ENFORCED, 8 * GIB, outside_systemd=False)
    assert result.status is Status.FAIL
    assert "8.0 GiB" in result.detail


# -- filesystems, runs_dir, database -------------------------------------------------------

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /shared rw - nfs4 server:/export rw,vers=4.2
41 40 0:51 / /shared/local\\040disk rw - xfs /dev/vdb rw
42 27 0:52 / /home/me/remote rw - fuse.sshfs me@host: rw
43 27 0:53 / /shared rw - tmpfs tmpfs rw
"""


def test_parse_mounts_and_the_deepest_last_mount_wins() -> None:
    mounts = parse_mounts(MOUNTINFO)
    assert Mount(Path("/shared/local disk"), "xfs") in mounts  # octal escape undone
    assert mount_of(Path("/srv/x"), mounts) == Mount(Path("/"), "ext4")
    assert mount_of(Path("/shared/local disk/runs"), mounts) == Mount(
        Path("/shared/local disk"), "xfs"
    )
    # /shared was mounted over again (tmpfs on top of nfs4): the later mount is what is seen.
    assert mount_of(Path("/shared/runs"), mounts) == Mount(Path("/shared"), "tmpfs")


@pytest.mark.parametrize(
    ("fstype", "network"),
    [
        ("ext4", False),
        ("tmpfs", False),
        ("nfs4", True),
        ("cifs", True),
        ("fuse.sshfs", True),
        ("fuse.fuse-overlayfs", False),
        ("ceph", True),
        (None, False),
    ],
)
def test_is_network(fstype: str | None, network: bool) -> None:
    assert is_network(fstype) is network


def test_runs_dir_on_nfs_warns_unless_polling_is_forced() -> None:
    nfs = replace(LOCAL_EXT4, fstype="nfs4", mount_point=Path("/srv"))
    result = runs_dir_check(settings(), nfs)
    assert result.status is Status.WARN
    assert "rescan, every 2 s" in result.detail
    assert runs_dir_check(settings(force_polling=True), nfs).status is Status.OK
    assert runs_dir_check(settings(), LOCAL_EXT4).status is Status.OK


def test_runs_dir_that_cannot_be_written_fails() -> None:
    state = replace(LOCAL_EXT4, problem="permission denied")
    result = runs_dir_check(settings(), state)
    assert result.status is Status.FAIL
    assert "/srv/runs permission denied" in result.detail


def _db(probe: DatabaseProbe, state: DirState = LOCAL_EXT4, head: str = "0004") -> Status:
    return database_check(settings(), probe, state, head).status


def test_database_decisions() -> None:
    at_head = DatabaseProbe(exists=True, journal_mode="wal", revision="0004", has_runs_table=True)
    assert _db(at_head) is Status.OK
    assert _db(DatabaseProbe(exists=False)) is Status.OK  # will be created
    assert _db(replace(at_head, journal_mode="delete")) is Status.WARN
    assert _db(replace(at_head, revision="0003")) is Status.WARN  # upgraded at start
    assert _db(replace(at_head, revision=None)) is Status.WARN  # the original schema
    assert _db(replace(at_head, revision="0005")) is Status.FAIL  # a newer runsup wrote it
    assert _db(DatabaseProbe(exists=True, error="not an SQLite database")) is Status.FAIL
    on_nfs = replace(LOCAL_EXT4, fstype="nfs", mount_point=Path("/srv"))
    assert _db(at_head, on_nfs) is Status.FAIL
    assert _db(DatabaseProbe(exists=False), replace(LOCAL_EXT4, problem="x")) is Status.FAIL


# -- Slurm executors -----------------------------------------------------------------------

CLUSTER = ExecutorSettings(name="cluster", kind="slurm", runs_dir=Path("/shared/runs"))
ALL_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sacct")


def fake_which(present: Sequence[str]) -> object:
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_probe_asks_scontrol_ping_then_sacct() -> None:
    asked: list[list[str]] = []

    def run(argv: Sequence[str], timeout: float) -> Answer:
        asked.append(list(argv))
        assert timeout == 5.0
        if argv[1] == "ping":
            return Answer(
                True, "Slurmctld(primary) at head is UP", "Slurmctld(primary) at head is UP\n"
            )
        return Answer(False, "Slurm accounting storage is disabled")

    probe = probe_slurm(CLUSTER, LOCAL_EXT4, which=fake_which(ALL_COMMANDS), run=run)  # type: ignore[arg-type]
    assert [a[:2] for a in asked] == [["/usr/bin/scontrol", "ping"], ["/usr/bin/sacct", "-n"]]
    results = executor_checks(CLUSTER, probe, ["sim"])
    by_name = {r.name: r for r in results}
    assert by_name["executor cluster"].status is Status.OK
    assert by_name["executor cluster: controller"].status is Status.OK
    assert by_name["executor cluster: accounting"].status is Status.WARN
    assert exit_code(results) == 0


def test_missing_commands_fail_for_a_used_executor_and_warn_for_an_unused_one() -> None:
    def run(argv: Sequence[str], timeout: float) -> Answer:
        raise AssertionError(f"nothing to run, yet {argv} was run")

    probe = probe_slurm(CLUSTER, LOCAL_EXT4, which=fake_which(()), run=run)  # type: ignore[arg-type]
    used = executor_checks(CLUSTER, probe, ["sim"])
    assert used[0].status is Status.FAIL
    assert "sbatch, squeue, scancel, scontrol not found on PATH" in used[0].detail
    assert exit_code(used) == 1
    unused = executor_checks(CLUSTER, probe, [])
    assert {r.status for r in unused} == {Status.OK, Status.WARN}  # runs_dir OK, the rest WARN


def test_ping_down_and_timeouts_are_not_answering() -> None:
    down = "Slurmctld(primary) at head is DOWN\n"
    up = "Slurmctld(primary) at head is UP\n"
    backup_down = "Slurmctld(backup) at spare is DOWN\n"
    assert not ping_answer(Answer(False, down.strip(), down)).ok
    assert ping_answer(Answer(True, up.strip(), up)).ok
    # A backup controller down while the primary answers: the cluster answers.
    both = ping_answer(Answer(False, backup_down.strip(), up + backup_down))
    assert both.ok
    assert both.message == f"{up.strip()}; {backup_down.strip()}"

    def run(argv: Sequence[str], timeout: float) -> Answer:
        return Answer(False, f"no answer within {timeout:g} s")

    quick = replace(CLUSTER, command_timeout_seconds=0.5)
    probe = probe_slurm(quick, LOCAL_EXT4, which=fake_which(ALL_COMMANDS), run=run)  # type: ignore[arg-type]
    assert probe.accounting is None  # not asked while the controller does not answer
    controller = executor_checks(quick, probe, ["sim"])[1]
    assert controller.status is Status.FAIL
    assert controller.detail == "not answering: no answer within 0.5 s"


# -- programs, hooks, metrics --------------------------------------------------------------


def test_program_problem(tmp_path: Path) -> None:
    script = tmp_path / "sim"
    script.write_text("#!/bin/sh\n")
    assert program_problem(str(script)) == f"{script} is not an executable file"
    script.chmod(0o755)
    assert program_problem(str(script)) is None
    assert program_problem(str(tmp_path / "nope")) == f"{tmp_path / 'nope'} does not exist"
    assert program_problem("{python}") is None
    assert program_problem("{run_dir}/sim") is None  # known only when the run starts
    assert program_problem("sh") is None
    assert program_problem("no-such-program-here") == "no-such-program-here not found on PATH"


def test_template_commands_and_hooks() -> None:
    broken = Template(name="broken", command=("/nonexistent/sim",), on_finish=("/bin/true",))
    remote = Template(name="remote", command=("/only/on/nodes",), executor="cluster")
    s = settings(broken, remote, hooks=HooksSettings(on_finish=("/nonexistent/notify",)))
    commands = commands_check(s)
    assert commands.status is Status.FAIL
    assert commands.detail == "broken: /nonexistent/sim does not exist"  # not remote's
    hooks = hooks_check(s)
    assert hooks.status is Status.FAIL
    assert hooks.detail == "[hooks] on_finish: /nonexistent/notify does not exist"
    assert hooks_check(settings()).detail == "none configured"


def test_metrics_address_taken_is_a_warning() -> None:
    s = settings(metrics=MetricsSettings(listen=ListenAddress("127.0.0.1", 9787)))
    assert metrics_check(s, ListenProbe(True)).status is Status.OK
    assert metrics_check(s, ListenProbe(False, served=True)).status is Status.OK
    taken = metrics_check(s, ListenProbe(False, problem="the port is taken by another program"))
    assert taken.status is Status.WARN
    assert taken.detail.startswith("127.0.0.1:9787: the port is taken")


def test_without_scontrol_squeue_asks_the_controller() -> None:
    asked: list[str] = []

    def run(argv: Sequence[str], timeout: float) -> Answer:
        asked.append(argv[0])
        return Answer(True, "exit status 0")

    present = ("sbatch", "squeue", "scancel")
    probe = probe_slurm(CLUSTER, LOCAL_EXT4, which=fake_which(present), run=run)  # type: ignore[arg-type]
    assert asked == ["/usr/bin/squeue"]
    assert probe.controller == Answer(True, "squeue answers")
    first = executor_checks(CLUSTER, probe, ["sim"])[0]
    assert first.status is Status.FAIL
    assert first.facts["missing"] == ["scontrol"]
