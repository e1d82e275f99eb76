"""The namespace-booted systemd harness works and stays isolated from the machine."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import pytest

# --import-mode=importlib does not put the test's folder on sys.path; the harness is a
# plain module next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from systemd_harness import (
    BOOT_TARGET,
    STUB_TARGETS,
    SystemdNamespace,
    booted_systemd,
    skip_reason,
)

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

NOTIFY_UNIT = "harness-notify.service"
# Plain socket code, no libsystemd: '$', '%' and backslashes are avoided because systemd
# expands or unescapes them in ExecStart=.
NOTIFY_CODE = (
    "import os, socket, time; "
    "a = os.environ['NOTIFY_SOCKET']; "
    "a = chr(0) + a[1:] if a.startswith('@') else a; "
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
    "s.sendto(('READY=1' + chr(10) + 'STATUS=hello').encode(), a); "
    "time.sleep(3600)"
)
# The system interpreter: the namespace hides /tmp and /root, where a checkout's venv may live,
# and the probe needs only the standard library.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
NOTIFY_UNIT_TEXT = f"""[Unit]
Description=harness Type=notify probe

[Service]
Type=notify
ExecStart={SYSTEM_PYTHON} -c "{NOTIFY_CODE}"
"""


def unit_pids(ns: SystemdNamespace, unit: str) -> list[int]:
    """Host pids of a unit's processes, read from its cgroup."""
    procs = ns.cgroup / "system.slice" / unit / "cgroup.procs"
    return [int(pid) for pid in procs.read_text().split()] if procs.exists() else []


def alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_type_notify_unit_reports_ready_and_status() -> None:
    with booted_systemd({NOTIFY_UNIT: NOTIFY_UNIT_TEXT}) as ns:
        started = ns.systemctl("start", NOTIFY_UNIT)
        assert started.returncode == 0, started.stderr + ns.console()
        props = ns.show(NOTIFY_UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
        assert props["ActiveState"] == "active", props
        assert props["StatusText"] == "hello", props
        assert int(props["MainPID"]) > 1
        assert unit_pids(ns, NOTIFY_UNIT), "the service runs in its own cgroup"

        stopped = ns.systemctl("stop", NOTIFY_UNIT)
        assert stopped.returncode == 0, stopped.stderr
        assert ns.show(NOTIFY_UNIT, "ActiveState")["ActiveState"] == "inactive"
        assert unit_pids(ns, NOTIFY_UNIT) == []


def test_teardown_leaves_no_process_behind() -> None:
    with booted_systemd({NOTIFY_UNIT: NOTIFY_UNIT_TEXT}) as ns:
        ns.systemctl("start", NOTIFY_UNIT, check=True)
        pids = [ns.pid, *unit_pids(ns, NOTIFY_UNIT)]
        assert len(pids) == 2
        assert all(alive(pid) for pid in pids)
        cgroup = ns.cgroup
    assert not any(alive(pid) for pid in pids)
    assert not cgroup.exists()
    assert not ns.workdir.exists()


def test_machine_tmp_and_units_are_untouched() -> None:
    canary = Path("/tmp") / f"runsup-harness-canary-{uuid.uuid4().hex}"
    canary.write_text("still here")
    try:
        with booted_systemd({NOTIFY_UNIT: NOTIFY_UNIT_TEXT}) as ns:
            inner_tmp = ns.run("ls", "-A", "/tmp", check=True).stdout.split()
            assert canary.name not in inner_tmp, "the namespace has a private /tmp"
            files = ns.systemctl("list-unit-files", "--no-legend", check=True).stdout
            names = {line.split()[0] for line in files.splitlines() if line.strip()}
            assert names == {NOTIFY_UNIT, BOOT_TARGET, *STUB_TARGETS}
            tmpfiles = ns.show("systemd-tmpfiles-setup.service", "LoadState")
            assert tmpfiles["LoadState"] == "not-found"
            assert ns.run("touch", "/etc/harness-probe").returncode != 0, "/ is read-only"
            assert ns.run("cat", "/proc/1/comm", check=True).stdout.strip() == "systemd"
        assert canary.read_text() == "still here"
    finally:
        canary.unlink()


def test_users_are_added_to_private_account_files() -> None:
    machine_passwd = Path("/etc/passwd").read_text()
    with booted_systemd({}, users=["harness-user"]) as ns:
        inside = ns.run("getent", "passwd", "harness-user")
        assert inside.returncode == 0
        assert inside.stdout.startswith("harness-user:x:")
        assert ns.run("getent", "group", "harness-user").returncode == 0
    assert Path("/etc/passwd").read_text() == machine_passwd
