"""The shipped systemd unit: systemd-analyze accepts it and it carries the key settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_NAME = "run-supervisor.service"
UNIT_PATH = Path(__file__).resolve().parents[2] / "systemd" / UNIT_NAME
SHIPPED_RUNSUP = "/opt/run-supervisor/venv/bin/runsup"
SHIPPED_EXEC_START = f"{SHIPPED_RUNSUP} daemon"
# "-": a moved venv whose ExecStart= alone was changed cannot keep the daemon from starting.
SHIPPED_EXEC_START_PRE = f"-+{SHIPPED_RUNSUP} cgroup-handover run-supervisor"
VERIFY_TIMEOUT_SECONDS = 60


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value assigned to it, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        assert not line.endswith("\\"), "continuation lines are not expected here"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def installed_runsup() -> Path | None:
    """The runsup command of the environment running the tests."""
    candidate = Path(sys.prefix) / "bin" / "runsup"
    if candidate.exists():
        return candidate
    found = shutil.which("runsup")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    """The parsed shipped unit."""
    return parse_unit(UNIT_PATH.read_text())


def setting(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The effective (last) value of a setting."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", SHIPPED_EXEC_START),
        ("ExecStartPre", SHIPPED_EXEC_START_PRE),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "30"),
        ("KillMode", "process"),
        ("TimeoutStopSec", "60"),
        ("Restart", "on-failure"),
        ("User", "run-supervisor"),
        ("Group", "run-supervisor"),
        ("StateDirectory", "run-supervisor"),
        ("StateDirectoryMode", "2770"),
        ("RuntimeDirectory", "run-supervisor"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("LogsDirectory", "run-supervisor"),
        ("UMask", "0027"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "no"),
        ("ReadWritePaths", "/tmp /var/tmp"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "no"),
        ("Delegate", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
    ],
)
def test_service_setting(unit: dict[str, dict[str, list[str]]], key: str, expected: str) -> None:
    assert setting(unit, "Service", key) == expected


def test_exec_start_pre_is_the_runsup_of_exec_start_and_cannot_block_it(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    # Issue 20 defect 3: the handover named the venv's python a second time, with no "-".
    program = setting(unit, "Service", "ExecStart").split()[0]
    pre = setting(unit, "Service", "ExecStartPre").split()
    assert pre[0].lstrip("-+") == program
    assert pre[0].startswith(("-+", "+-")), "a failing handover must not block the start"
    assert pre[1] == "cgroup-handover"


def test_the_handover_is_a_runsup_command(tmp_path: Path) -> None:
    runsup = installed_runsup()
    assert runsup is not None, "runsup is not installed in the test environment"
    result = subprocess.run(
        [str(runsup), "cgroup-handover", "no-such-user-runsup"],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_SECONDS,
        check=False,
    )
    # A failed handover says why and exits 0: the daemon still starts.
    assert result.returncode == 0, result.stderr
    assert "no such user: no-such-user-runsup" in result.stderr


def test_no_memory_deny_write_execute(unit: dict[str, dict[str, list[str]]]) -> None:
    assert "MemoryDenyWriteExecute" not in unit["Service"], "JITs in simulations need W+X"


def test_no_private_tmp_under_detached_runs(unit: dict[str, dict[str, list[str]]]) -> None:
    # With KillMode=process runs outlive the daemon, and systemd removes a PrivateTmp=
    # directory at every stop or restart: live runs would lose /tmp (ENOENT from then on).
    assert setting(unit, "Service", "KillMode") == "process"
    assert setting(unit, "Service", "PrivateTmp") == "no"


def test_timeout_stop_covers_cancel_grace(unit: dict[str, dict[str, list[str]]]) -> None:
    default_cancel_grace_seconds = 10
    assert int(setting(unit, "Service", "TimeoutStopSec")) > 2 * default_cancel_grace_seconds


def test_watchdog_not_passed_to_runs_by_notify_all(unit: dict[str, dict[str, list[str]]]) -> None:
    assert setting(unit, "Service", "NotifyAccess") != "all"


def test_install_section(unit: dict[str, dict[str, list[str]]]) -> None:
    assert setting(unit, "Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verify_accepts_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    runsup = installed_runsup()
    assert runsup is not None, "runsup is not installed in the test environment"
    text = UNIT_PATH.read_text()
    assert f"ExecStart={SHIPPED_EXEC_START}\n" in text
    copy = tmp_path / UNIT_NAME
    assert f"ExecStartPre={SHIPPED_EXEC_START_PRE}\n" in text
    copy.write_text(text.replace(SHIPPED_RUNSUP, str(runsup)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_SECONDS,
        check=False,
    )
    complaints = [line for line in result.stderr.splitlines() if UNIT_NAME in line]
    assert result.returncode == 0, result.stderr
    assert complaints == [], result.stderr
