"""The shipped unit with the venv installed somewhere else and only ExecStart= changed, as an
operator would do it, under a namespace-booted systemd (issue 20 defect 3): the service starts.

The venv built for the systemd tier (systemd_install.py) is copied to /opt/elsewhere/venv
inside the namespace's /opt, its console script pointed at its new interpreter as pip would
have written it there, and /opt/run-supervisor does not exist at all.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# --import-mode=importlib does not put the test's folder on sys.path; the helpers are plain
# modules next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_harness import wait_for
from systemd_harness import booted_systemd, skip_reason
from systemd_install import INNER_RUNSUP, INNER_VENV, install_skip_reason, service_opt

REPO = Path(__file__).resolve().parents[2]
UNIT = "run-supervisor.service"
UNIT_TEXT = (REPO / "systemd" / UNIT).read_text()
MOVED_VENV = "/opt/elsewhere/venv"
SERVICE_USER = "run-supervisor"
# Building the service venv (a wheel of the work tree, once per content) on a loaded machine
# takes minutes; the boot and the start themselves take seconds.
BUILD_AND_BOOT_TIMEOUT_SECONDS = 900

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
    pytest.mark.skipif(install_skip_reason() is not None, reason=str(install_skip_reason())),
]


def moved_opt(tmp_path: Path) -> Path:
    """A folder to bind on /opt holding the service venv at MOVED_VENV, and nothing else."""
    built = service_opt() / Path(INNER_VENV).relative_to("/opt")
    opt = tmp_path / "opt"
    target = opt / Path(MOVED_VENV).relative_to("/opt")
    shutil.copytree(built, target, symlinks=True)
    script = target / "bin" / "runsup"
    first, rest = script.read_text().split("\n", 1)
    assert first == f"#!{INNER_VENV}/bin/python", first
    script.write_text(f"#!{MOVED_VENV}/bin/python\n{rest}")
    for folder in (opt, *target.parents):
        if folder.is_relative_to(opt):
            folder.chmod(0o755)
    return opt


@pytest.mark.timeout(BUILD_AND_BOOT_TIMEOUT_SECONDS)
def test_a_moved_venv_with_only_exec_start_changed_still_starts(tmp_path: Path) -> None:
    opt = moved_opt(tmp_path)
    moved = f"ExecStart={MOVED_VENV}/bin/runsup daemon"
    unit = UNIT_TEXT.replace(f"ExecStart={INNER_RUNSUP} daemon", moved)
    assert moved in unit
    with booted_systemd(
        {UNIT: unit}, users=[SERVICE_USER], members={}, opt_dir=opt, journald=True
    ) as ns:
        assert ns.run("test", "-e", INNER_VENV).returncode != 0  # the old path is gone
        started = ns.systemctl("start", UNIT)
        assert started.returncode == 0, f"{started.stderr}\n{ns.console()}"

        def serving() -> dict[str, str] | None:
            props = ns.show(UNIT, "ActiveState", "SubState", "StatusText", "NRestarts")
            return props if props["StatusText"] == "0 running, 0 pending" else None

        props = wait_for("the moved service to serve", serving)
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert props["NRestarts"] == "0"
