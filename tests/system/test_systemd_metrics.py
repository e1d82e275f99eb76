"""The shipped metrics timer under a real systemd (PID 1 of isolated namespaces), as installed.

The daemon's unit and run-supervisor-metrics.service/.timer exactly as shipped, the venv on
/opt as systemd_install.py builds it: the timer fires, the textfile appears in the folder
node_exporter reads, parses, carries the daemon's heartbeat, and is written again 15 s later.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

# --import-mode=importlib does not put the test's folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_harness import wait_for as until
from systemd_harness import SystemdNamespace, booted_systemd, skip_reason
from systemd_install import install_skip_reason, service_opt

REPO = Path(__file__).resolve().parents[2]
DAEMON_UNIT = "run-supervisor.service"
METRICS_UNIT = "run-supervisor-metrics.service"
TIMER_UNIT = "run-supervisor-metrics.timer"
SERVICE_USER = "run-supervisor"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
TEXTFILE = f"{TEXTFILE_DIR}/runsup.prom"
# The timer's period is 15 s: a second write must come within two periods.
REWRITE_DEADLINE_SECONDS = 40.0


def _skip_reason() -> str | None:
    return skip_reason() or install_skip_reason()


pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


@pytest.fixture
def ns() -> Iterator[SystemdNamespace]:
    """systemd booted on the three shipped units, with the service user and the venv."""
    units = {
        name: (REPO / "systemd" / name).read_text()
        for name in (DAEMON_UNIT, METRICS_UNIT, TIMER_UNIT)
    }
    with booted_systemd(units, users=[SERVICE_USER], opt_dir=service_opt(), journald=True) as ns:
        yield ns


def _ok(ns: SystemdNamespace, *cmd: str) -> str:
    out = ns.run(*cmd)
    assert out.returncode == 0, f"{cmd}: {out.stderr}\n{ns.console()}"
    return out.stdout


def _textfile(ns: SystemdNamespace) -> tuple[str, str] | None:
    """(mtime with nanoseconds, content) of the textfile, or None while there is none."""
    stat = ns.run("stat", "-c", "%y", TEXTFILE)
    if stat.returncode != 0:
        return None
    return stat.stdout.strip(), _ok(ns, "cat", TEXTFILE)


def _samples(text: str) -> dict[str, float]:
    return {
        s.name: float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def test_timer_writes_the_textfile_every_15_seconds(ns: SystemdNamespace) -> None:
    _ok(ns, "install", "-d", "-m", "0755", TEXTFILE_DIR)
    _ok(ns, "chgrp", SERVICE_USER, TEXTFILE_DIR)
    _ok(ns, "chmod", "g+w", TEXTFILE_DIR)
    _ok(ns, "systemctl", "start", DAEMON_UNIT)
    _ok(ns, "systemctl", "start", TIMER_UNIT)

    def beating() -> tuple[str, str] | None:
        found = _textfile(ns)
        if found is None:
            return None
        return found if _samples(found[1])["runsup_daemon_heartbeat_timestamp_seconds"] else None

    first_mtime, first = until("the textfile with the daemon's heartbeat", beating)
    samples = _samples(first)
    assert samples["runsup_oldest_pending_seconds"] == 0
    assert "runsup_progress_age_seconds" in samples
    mode = _ok(ns, "stat", "-c", "%a %U", TEXTFILE).split()
    assert mode == ["644", SERVICE_USER]
    # Only the file itself: the temporary one it was renamed from is gone.
    assert _ok(ns, "ls", "-A", TEXTFILE_DIR).split() == ["runsup.prom"]

    until(
        "the timer to write the textfile again",
        lambda: ((found := _textfile(ns)) is not None and found[0] != first_mtime) or None,
        REWRITE_DEADLINE_SECONDS,
    )
    result = ns.show(METRICS_UNIT, "Result", "ExecMainStatus")
    assert result == {"Result": "success", "ExecMainStatus": "0"}
