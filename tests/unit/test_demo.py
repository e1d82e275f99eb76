"""The demo's own daemon environment (pure logic)."""

from __future__ import annotations

from supervisor.cli.demo import MARKER_VARIABLE, daemon_environment


def test_the_demo_daemon_gets_no_systemd_or_settings_variable() -> None:
    # Issue 20 defect 15: the demo kept a copy of notify's list, and it had drifted
    # (INVOCATION_ID, JOURNAL_STREAM, MAINPID... reached the demo's daemon).
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "1000000",
        "INVOCATION_ID": "0123",
        "JOURNAL_STREAM": "8:1234",
        "MAINPID": "1",
        "RUNSUP_CONFIG": "/etc/runsup.toml",
        "RUNSUP_DATABASE": "/var/lib/runs.db",
        "RUNSUP_RUNS_DIR": "/data/runs",
        "RUNSUP_MAX_CONCURRENT": "9",
    }
    env = daemon_environment(environ, "token")
    assert env == {"PATH": "/usr/bin", "HOME": "/home/u", MARKER_VARIABLE: "token"}
