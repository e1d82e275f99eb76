"""A run another program (FUSION's GUI) starts itself, for the system tests (SPEC section 3)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

from daemon_harness import TEST_SIM, DaemonHarness

from supervisor.db import new_run_id
from supervisor.db.schema import TIMESTAMP_FORMAT


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


class GuiRun:
    """A run the GUI starts itself: its own child in a session of its own, then RUNNING."""

    def __init__(self, h: DaemonHarness, config: dict[str, object]) -> None:
        self.run_id = new_run_id()
        self.run_dir = h.runs_dir / self.run_id
        self.run_dir.mkdir(parents=True)
        (self.run_dir / "config.json").write_text(json.dumps(config))
        started = datetime.now(UTC)
        self.proc = subprocess.Popen(
            [sys.executable, str(TEST_SIM), str(self.run_dir / "config.json")],
            cwd=self.run_dir,
            start_new_session=True,
            env={"RUNSUP_PROGRESS_FILE": str(self.run_dir / "progress.jsonl"), "PATH": "/bin"},
        )
        with sqlite3.connect(h.db_path, isolation_level=None) as conn:
            conn.execute(
                "INSERT INTO runs (id, status, config_json, template, created_at, started_at,"
                " pid, pgid, run_dir) VALUES (?, 'RUNNING', ?, 'testsim', ?, ?, ?, ?, ?)",
                (
                    self.run_id,
                    json.dumps(config),
                    stamp(started),
                    stamp(started),
                    self.proc.pid,
                    self.proc.pid,
                    str(self.run_dir),
                ),
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
