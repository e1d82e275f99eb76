"""Plain `runsup check` (SPEC 7) on this machine: the installed command, real files, a real
database, real sockets, the real Slurm client commands (or their absence from PATH)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemon_harness import DaemonHarness

from supervisor.db import HEAD_REVISION
from supervisor.executors.local import cgroups
from supervisor.queue.gpus import resolve_gpus

if TYPE_CHECKING:
    from conftest import Runsup

RUNSUP_TIMEOUT_SECONDS = 60

CHECK_NAMES = {
    "configuration", "cpus", "gpus", "memory caps", "runs_dir", "database",
    "template commands", "hooks", "metrics",
}  # fmt: skip
WIDE = {"COLUMNS": "200"}  # the table for people is not wrapped


def write_config(tmp_path: Path, extra: str = "", template: str = "") -> Path:
    """A configuration under tmp_path: runs_dir, database, a template `sim` that can run here."""
    path = tmp_path / "runsup.toml"
    path.write_text(
        f'runs_dir = "{tmp_path / "runs"}"\n'
        f'database = "{tmp_path / "runs.db"}"\n'
        f"{extra}\n"
        "[templates.sim]\n"
        f'command = ["{sys.executable}", "-c", "pass"]\n'
        f"{template}\n"
    )
    return path


def check_json(runsup: Runsup, conf: Path, **env: str) -> tuple[int, dict[str, Any]]:
    """Exit status and parsed --json output of `runsup check`."""
    result = runsup("check", "--json", "--config", str(conf), env=env)
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's checks by name."""
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on (the kernel's pick, released again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_good_setup_passes_and_creates_nothing(
    runsup: Runsup, tmp_path: Path, free_port: int
) -> None:
    hook = tmp_path / "notify"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    conf = write_config(
        tmp_path,
        f'[hooks]\non_finish = ["{hook}", "{{run_id}}", "{{status}}"]\n'
        f'[metrics]\nlisten = "127.0.0.1:{free_port}"\n',
    )
    status, report = check_json(runsup, conf)
    checks = by_name(report)
    assert set(checks) >= CHECK_NAMES, sorted(checks)
    assert status == 0, [c for c in report["checks"] if c["status"] == "fail"]
    assert report["ok"] is True
    assert checks["cpus"]["facts"]["machine"] == len(os.sched_getaffinity(0))
    assert checks["database"]["detail"].endswith(f"will be created (WAL, schema {HEAD_REVISION})")
    assert checks["hooks"]["detail"] == "1 found"
    assert checks["metrics"]["detail"] == f"127.0.0.1:{free_port} is free"
    assert checks["runs_dir"]["facts"]["filesystem"]  # the real mount's type was found
    # check is read-only: neither the database nor the runs directory was made.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "notify", "runsup.toml"]

    text = runsup("check", "--config", str(conf), env=WIDE)
    assert text.returncode == 0, text.stdout
    lines = text.stdout.splitlines()
    assert lines[0] == "configuration OK"
    assert lines[-1] in ("ready", "ready (1 warning)", "ready (2 warnings)")
    rows = {line.split()[0] for line in lines if line.split()[1:2] in (["ok"], ["warn"])}
    assert {"configuration", "cpus", "gpus", "database", "hooks", "metrics"} <= rows


def test_an_existing_database_at_head_in_wal_is_ok(runsup: Runsup, tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    # `db upgrade` creates it (`list` only reads: it never creates a database).
    assert runsup("db", "upgrade", "--config", str(conf)).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    status, report = check_json(runsup, conf)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -wal or -shm made
    database = by_name(report)["database"]
    assert (status, database["status"]) == (0, "ok")
    assert database["facts"]["journal_mode"] == "wal"
    assert database["facts"]["revision"] == HEAD_REVISION


def test_a_broken_configuration_is_one_line_and_exit_1(runsup: Runsup, tmp_path: Path) -> None:
    conf = write_config(tmp_path, "max_concurent_runs = 3")
    result = runsup("check", "--config", str(conf))
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "unknown key 'max_concurent_runs'" in result.stderr


def test_a_template_asking_for_a_gpu_this_machine_lacks_fails(
    runsup: Runsup, tmp_path: Path
) -> None:
    if resolve_gpus("auto"):
        pytest.skip("this machine has GPUs")
    conf = write_config(tmp_path, template="gpus = 1")
    status, report = check_json(runsup, conf)
    gpus = by_name(report)["gpus"]
    assert (status, gpus["status"]) == (1, "fail")
    assert "sim asks 1" in gpus["detail"]
    text = runsup("check", "--config", str(conf), env=WIDE)
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1].startswith("NOT READY: 1 failed check(s): gpus")


def check_json_in_namespace(runsup: Runsup, conf: Path, setup: str) -> tuple[int, dict[str, Any]]:
    """As check_json, in a mount namespace of its own after the shell commands `setup` (so
    what they mount or unmount is gone with the command)."""
    namespace = ["unshare", "--mount", "--propagation", "private"]
    shell = ["/bin/sh", "-c", f'{setup} && exec "$@"', "sh"]
    result = subprocess.run(
        [*namespace, *shell, str(runsup.command), "check", "--json", "--config", str(conf)],
        env=runsup.env,
        capture_output=True,
        text=True,
        timeout=RUNSUP_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.tier("cgroup")
def test_memory_max_passes_where_this_machine_can_cap(runsup: Runsup, tmp_path: Path) -> None:
    if not cgroups.detect().enforced:
        pytest.skip("this machine offers no memory caps (the cgroup tier needs them)")
    conf = write_config(tmp_path, template='memory_max = "64M"')
    status, report = check_json(runsup, conf)
    caps = by_name(report)["memory caps"]
    assert (status, caps["status"]) == (0, "ok"), caps
    assert caps["facts"]["enforced"] is True
    # The cgroup it names is one the kernel caps memory in (v1 or v2 interface file).
    base = Path(caps["facts"]["cgroup"])
    assert (base / "memory.limit_in_bytes").exists() or (base / "memory.max").exists(), base


@pytest.mark.tier("mount", "root")
def test_memory_max_fails_where_no_cgroup_is_mounted(runsup: Runsup, tmp_path: Path) -> None:
    conf = write_config(tmp_path, template='memory_max = "64M"')
    status, report = check_json_in_namespace(runsup, conf, "umount -R /sys/fs/cgroup")
    caps = by_name(report)["memory caps"]
    assert (status, caps["status"]) == (1, "fail"), caps
    assert caps["facts"]["enforced"] is False
    assert "sim set memory_max" in caps["detail"]
    assert "Delegate=yes" in caps["fix"]


def slurm_config(tmp_path: Path, used: bool, timeout: float | None = None) -> Path:
    """A configuration with a Slurm executor `cluster`, used by `sim` or by no template."""
    own = f"command_timeout_seconds = {timeout}\n" if timeout is not None else ""
    return write_config(
        tmp_path,
        f'[executors.cluster]\nkind = "slurm"\nruns_dir = "{tmp_path / "shared"}"\n{own}',
        'executor = "cluster"' if used else "",
    )


@pytest.fixture
def empty_path(tmp_path: Path) -> Iterator[str]:
    """A PATH where no program is found."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    yield str(empty)


def test_slurm_commands_missing_from_path_fail_a_template_that_uses_them(
    runsup: Runsup, tmp_path: Path, empty_path: str
) -> None:
    conf = slurm_config(tmp_path, used=True)
    status, report = check_json(runsup, conf, PATH=empty_path)
    cluster = by_name(report)["executor cluster"]
    assert (status, cluster["status"]) == (1, "fail")
    assert cluster["facts"]["missing"] == ["sbatch", "squeue", "scancel", "scontrol"]
    assert "used by sim" in cluster["detail"]


def test_an_unused_slurm_executor_only_warns(
    runsup: Runsup, tmp_path: Path, empty_path: str
) -> None:
    conf = slurm_config(tmp_path, used=False)
    status, report = check_json(runsup, conf, PATH=empty_path)
    assert status == 0
    assert by_name(report)["executor cluster"]["status"] == "warn"


@pytest.mark.tier("slurm")
@pytest.mark.skipif(shutil.which("scontrol") is None, reason="Slurm's client is not installed")
def test_a_controller_that_does_not_answer_is_reported_within_the_timeout(
    runsup: Runsup, tmp_path: Path
) -> None:
    # With its slurm.conf missing, scontrol retries for a minute: a controller that hangs.
    conf = slurm_config(tmp_path, used=True, timeout=0.5)
    missing_conf = str(tmp_path / "no-slurm.conf")
    status, report = check_json(runsup, conf, SLURM_CONF=missing_conf)
    controller = by_name(report)["executor cluster: controller"]
    assert (status, controller["status"]) == (1, "fail")
    assert controller["detail"] == "not answering: no answer within 0.5 s"
    assert by_name(report)["executor cluster: runs_dir"]["status"] == "ok"


def test_a_database_in_rollback_journal_mode_warns_and_is_left_as_it_is(
    runsup: Runsup, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY)")  # the original table, no revision
    conn.commit()
    conn.close()
    before = db.read_bytes()
    status, report = check_json(runsup, write_config(tmp_path))
    database = by_name(report)["database"]
    assert (status, database["status"]) == (0, "warn")
    assert "journal mode delete, not wal" in database["detail"]
    assert "original schema" in database["detail"]
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("runs.db")) == ["runs.db"]


def test_a_database_from_a_newer_runsup_or_not_a_database_fails(
    runsup: Runsup, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
    conn.execute("INSERT INTO alembic_version VALUES ('9999')")
    conn.commit()
    conn.close()
    status, report = check_json(runsup, write_config(tmp_path))
    assert status == 1
    assert "schema 9999 is newer than this runsup knows" in by_name(report)["database"]["detail"]
    db.write_text("not a database at all\n" * 10)
    status, report = check_json(runsup, write_config(tmp_path))
    assert status == 1
    assert by_name(report)["database"]["detail"].endswith("not an SQLite database")


def test_a_runs_dir_that_cannot_be_made_fails(runsup: Runsup, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    conf = write_config(tmp_path)
    conf.write_text(conf.read_text().replace(str(tmp_path / "runs"), str(blocker / "runs")))
    status, report = check_json(runsup, conf)
    runs_dir = by_name(report)["runs_dir"]
    assert (status, runs_dir["status"]) == (1, "fail")
    expected = f"{blocker / 'runs'} cannot be created: {blocker} is not a directory"
    assert runs_dir["detail"] == expected


@pytest.mark.tier("mount", "root")
def test_a_runs_dir_that_cannot_be_written_fails(runsup: Runsup, tmp_path: Path) -> None:
    """Root writes through permission bits: as root the runs_dir is a read-only bind mount
    (in a mount namespace of the command's own); as anyone else, a directory mode 0500."""
    runs = tmp_path / "runs"
    runs.mkdir()
    conf = write_config(tmp_path)
    if os.geteuid() == 0:
        setup = f"mount --bind {runs} {runs} && mount -o remount,bind,ro {runs}"
        status, report = check_json_in_namespace(runsup, conf, setup)
    else:
        runs.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            status, report = check_json(runsup, conf)
        finally:
            runs.chmod(0o755)
    runs_dir = by_name(report)["runs_dir"]
    assert (status, runs_dir["status"]) == (1, "fail"), runs_dir
    assert str(runs) in runs_dir["detail"]
    # The same directory, writable again: the check passes (the failure was the permission).
    status, report = check_json(runsup, conf)
    assert by_name(report)["runs_dir"]["status"] == "ok"


def test_a_missing_hook_program_fails(runsup: Runsup, tmp_path: Path) -> None:
    conf = write_config(tmp_path, template=f'on_finish = ["{tmp_path / "gone"}", "{{run_id}}"]')
    status, report = check_json(runsup, conf)
    hooks = by_name(report)["hooks"]
    assert (status, hooks["status"]) == (1, "fail")
    assert hooks["detail"] == f"sim on_finish: {tmp_path / 'gone'} does not exist"


def test_a_metrics_port_another_program_holds_is_a_warning(runsup: Runsup, tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        conf = write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{port}"')
        status, report = check_json(runsup, conf)
    metrics = by_name(report)["metrics"]
    assert (status, metrics["status"]) == (0, "warn")
    assert metrics["detail"].startswith(f"127.0.0.1:{port}: the port is taken by another program")


def test_a_metrics_port_a_runsup_daemon_serves_is_fine(runsup: Runsup, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon_dir = tmp_path / "daemon"
    daemon_dir.mkdir()
    harness = DaemonHarness(daemon_dir)
    harness.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"')
    try:
        harness.start()
        harness.wait_logged("metrics_serving", address=f"127.0.0.1:{port}")
        conf = write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{port}"')
        status, report = check_json(runsup, conf)
        metrics = by_name(report)["metrics"]
        assert (status, metrics["status"]) == (0, "ok"), metrics
        assert metrics["detail"] == f"127.0.0.1:{port} is served by a running runsup daemon"
    finally:
        harness.close()


@pytest.mark.tier("slurm")
def test_a_real_slurm_controller_answers(
    runsup: Runsup, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The cluster fixture comes with the Slurm executor's tests (tests/slurm_fixtures.py);
    # on a branch without it, or a machine without Slurm's daemons, this skips.
    try:
        cluster = request.getfixturevalue("slurm_cluster")
    except pytest.FixtureLookupError:
        pytest.skip("no slurm_cluster fixture here")
    conf = slurm_config(tmp_path, used=True)
    status, report = check_json(runsup, conf, SLURM_CONF=cluster.env["SLURM_CONF"])
    checks = by_name(report)
    assert (status, checks["executor cluster: controller"]["status"]) == (0, "ok")
    assert checks["executor cluster: controller"]["detail"].endswith(" is UP")
    # The session's cluster keeps no accounting: sacct says so, a warning only.
    assert checks["executor cluster: accounting"]["status"] == "warn"
    assert "accounting storage is disabled" in checks["executor cluster: accounting"]["detail"]
