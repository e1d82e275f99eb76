"""`runsup results`, the bounded `runsup list` and `runsup resubmit --sweep ID --failed`, through
the installed command, on rows and run directories as the daemon leaves them (written here with
sqlite3, as another program would; no daemon is needed to read results)."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import RUNSUP, isolated_env
from png_checks import assert_png_drawn

from supervisor.db import new_run_id
from supervisor.db.schema import TIMESTAMP_FORMAT
from supervisor.plot import INSTALL_HINT
from supervisor.results import MAX_RESULTS_BYTES

HUNDRED_MB = 100 * 1000 * 1000


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass
class Campaign:
    """A config file, a database made by `runsup db upgrade`, and rows written into it."""

    tmp: Path
    db_path: Path = field(init=False)
    runs_dir: Path = field(init=False)
    config: Path = field(init=False)
    clock: datetime = field(default_factory=lambda: datetime(2026, 12, 1, tzinfo=UTC))

    def __post_init__(self) -> None:
        self.db_path = self.tmp / "runs.db"
        self.runs_dir = self.tmp / "runs"
        self.config = self.tmp / "config.toml"
        self.config.write_text(
            f"database = {json.dumps(str(self.db_path))}\n"
            f"runs_dir = {json.dumps(str(self.runs_dir))}\n"
            "[templates.sim]\ncommand = ['/bin/true']\n"
        )

    def runsup(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RUNSUP), "--config", str(self.config), *args],
            env=isolated_env(self.tmp / "home", env),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add(
        self,
        config: dict[str, Any],
        status: str = "COMPLETED",
        results: str | bytes | None = None,
        sweep_id: str | None = None,
        name: str | None = None,
    ) -> str:
        """A row with this status, and its run directory holding `results` as results.json."""
        run_id = new_run_id()
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True)
        if results is not None:
            data = results.encode() if isinstance(results, str) else results
            (run_dir / "results.json").write_bytes(data)
        self.clock += timedelta(seconds=10)
        started = self.clock if status != "PENDING" else None
        ended = (
            self.clock + timedelta(seconds=2.5) if status not in ("PENDING", "RUNNING") else None
        )
        with sqlite3.connect(self.db_path, isolation_level=None) as conn:
            conn.execute(
                "INSERT INTO runs (id, name, status, config_json, template, created_at,"
                " started_at, completed_at, run_dir, attempt, sweep_id)"
                " VALUES (?, ?, ?, ?, 'sim', ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    name,
                    status,
                    json.dumps(config),
                    stamp(self.clock),
                    stamp(started) if started else None,
                    stamp(ended) if ended else None,
                    str(run_dir) if started else None,
                    1 if started else None,
                    sweep_id,
                ),
            )
        return run_id


@pytest.fixture
def campaign(tmp_path: Path) -> Iterator[Campaign]:
    c = Campaign(tmp_path)
    assert c.runsup("db", "upgrade").returncode == 0
    yield c


def test_results_of_every_kind_give_clear_cells_and_notes_never_a_traceback(
    campaign: Campaign,
) -> None:
    sweep = new_run_id()
    add = campaign.add
    nested = add(
        {"load": 1}, results='{"v": 1.5, "a": {"b": {"c": 2}}, "load": 10}', sweep_id=sweep
    )
    missing = add({"load": 2}, sweep_id=sweep)
    not_json = add({"load": 3}, results="{not json", sweep_id=sweep)
    a_list = add({"load": 4}, results="[1, 2]", sweep_id=sweep)
    clash = add({"load": 5}, results='{"a": {"b": {"c": 3}}, "a.b.c": 4, "v": NaN}', sweep_id=sweep)
    failed = add({"load": 6}, status="FAILED", sweep_id=sweep)
    huge = add({"load": 7}, sweep_id=sweep)
    # 100 MB (sparse: nothing is written, the size is what counts) is never read.
    with (campaign.runs_dir / huge / "results.json").open("wb") as fh:
        fh.truncate(HUNDRED_MB)
    assert HUNDRED_MB > MAX_RESULTS_BYTES

    table = campaign.runsup("results", "--sweep", sweep)
    as_csv = campaign.runsup("results", "--sweep", sweep, "--csv")
    as_json = campaign.runsup("results", "--sweep", sweep, "--json")
    for out in (table, as_csv, as_json):
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        notes = out.stderr
        assert f"run {missing}: it wrote no results.json" in notes
        assert f"run {not_json}: results.json is not JSON" in notes
        assert f"run {a_list}: results.json holds a JSON list, not an object" in notes
        assert f"run {clash}: results.json names a.b.c twice; the first kept" in notes
        assert f"run {huge}: results.json is 95.4 MiB, over the 16 MiB limit" in notes
        assert failed not in notes  # a FAILED run without results is no news
    rows = {row["id"]: row for row in json.loads(as_json.stdout)}
    columns = list(json.loads(as_json.stdout)[0])
    assert columns == [
        "id", "name", "status", "attempt", "duration_seconds",
        "config.load", "results.v", "results.a.b.c", "results.load",
    ]  # fmt: skip
    assert rows[nested]["results.a.b.c"] == 2 and rows[nested]["results.load"] == 10
    assert rows[nested]["config.load"] == 1 and rows[nested]["duration_seconds"] == 2.5
    assert rows[clash]["results.a.b.c"] == 3
    assert rows[clash]["results.v"] is None  # NaN: JSON has no word for it
    for bad in (missing, not_json, a_list, huge, failed):
        assert {rows[bad][c] for c in columns if c.startswith("results.")} == {None}
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["id"] for r in parsed] == list(rows)
    assert parsed[0]["results.a.b.c"] == "2" and parsed[1]["results.v"] == ""
    assert table.stdout.splitlines()[0].split() == columns

    # The clash between a config key and a results key is for --plot to name.
    out = campaign.runsup("results", "--sweep", sweep, "--plot", "load:v")
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        "runsup: error: --plot: 'load' is both config.load and results.load: name one of them"
    )


def test_plot_of_a_two_key_sweep_is_a_png_with_a_line_for_each_value(campaign: Campaign) -> None:
    sweep = new_run_id()
    for k in ("a", "b"):
        for x in range(5):
            y = x * x + (3 if k == "b" else 0)
            campaign.add({"x": x, "k": k, "fixed": 1}, results=json.dumps({"y": y}), sweep_id=sweep)
    out_png = campaign.tmp / "pictures" / "xy.png"
    out = campaign.runsup("results", "--sweep", sweep, "--plot", "x:y", "--out", str(out_png))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{out_png}: 10 runs plotted"
    assert_png_drawn(out_png)


def test_plot_without_matplotlib_says_how_to_get_it(campaign: Campaign) -> None:
    sweep = new_run_id()
    for x in range(2):
        campaign.add({"x": x}, results=json.dumps({"y": x}), sweep_id=sweep)
    # A matplotlib that cannot be imported, first on the path: as on a machine without it.
    shadow = campaign.tmp / "no-matplotlib" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {"PYTHONPATH": str(shadow.parent)}
    out = campaign.runsup("results", "--sweep", sweep, "--plot", "x:y", env=env)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert INSTALL_HINT in out.stderr and "matplotlib" in out.stderr
    assert not (campaign.tmp / "results.png").exists()


def test_list_is_bounded_by_default(campaign: Campaign) -> None:
    for i in range(25):
        campaign.add({"i": i})
    waiting = [campaign.add({"w": i}, status="PENDING") for i in range(3)]
    out = campaign.runsup("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "... and 5 more (--all shows every run, --limit N the N newest)"
    shown = lines[1:-1]
    assert len(shown) == 23
    assert all(any(line.startswith(w) for line in shown) for w in waiting)
    every = campaign.runsup("list", "--all")
    assert len(every.stdout.splitlines()) == 1 + 28
    as_json = campaign.runsup("list", "--json")
    assert len(json.loads(as_json.stdout)) == 23
    assert "5 more" in as_json.stderr


def test_results_without_ids_shows_the_newest_runs(campaign: Campaign) -> None:
    made = [campaign.add({"i": i}, results=json.dumps({"y": i})) for i in range(23)]
    out = campaign.runsup("results", "--json")
    assert [r["id"] for r in json.loads(out.stdout)] == made[-20:]
    assert "3 older runs not shown" in out.stderr
    out = campaign.runsup("results", made[0], made[1], "--json")
    assert [r["results.y"] for r in json.loads(out.stdout)] == [0, 1]


def test_resubmit_failed_of_a_sweep_queues_each_failed_point_once(campaign: Campaign) -> None:
    sweep = new_run_id()
    ok = campaign.add({"x": 1}, sweep_id=sweep, name="x=1")
    bad = [campaign.add({"x": x}, status="FAILED", sweep_id=sweep, name=f"x={x}") for x in (2, 3)]
    out = campaign.runsup("resubmit", "--sweep", sweep, "--failed")
    assert out.returncode == 0, out.stderr
    new_ids = out.stdout.split()
    assert len(new_ids) == 2
    with sqlite3.connect(campaign.db_path) as conn:
        rows = conn.execute(
            "SELECT id, status, config_json, name, sweep_id FROM runs WHERE id IN (?, ?)", new_ids
        ).fetchall()
    assert {(s, json.loads(c)["x"], n, w) for _, s, c, n, w in rows} == {
        ("PENDING", 2, "x=2", sweep),
        ("PENDING", 3, "x=3", sweep),
    }
    assert ok not in new_ids and not set(bad) & set(new_ids)
    again = campaign.runsup("resubmit", "--sweep", sweep, "--failed")
    assert again.returncode == 0 and again.stdout == ""
    assert "no failed runs to resubmit" in again.stderr
    unknown = campaign.runsup("resubmit", "--sweep", "000000000000", "--failed")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "runsup: error: no sweep with id '000000000000'"


def test_results_on_a_missing_database_names_it_and_creates_nothing(tmp_path: Path) -> None:
    c = Campaign(tmp_path)
    out = c.runsup("results")
    assert out.returncode == 1
    assert str(c.db_path) in out.stderr and "Traceback" not in out.stderr
    assert not c.db_path.exists()
    assert not os.path.exists(f"{c.db_path}-wal")
