"""The installed `runsup` command against a real database in a temporary state directory."""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from free_template import FREE_TEMPLATE, with_free_template

from supervisor.db import Store
from supervisor.executors.base import ProcessRecord
from supervisor.states import RunStatus

if TYPE_CHECKING:
    from conftest import Runsup

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
TIMESTAMP_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")
TIMING_RUNS = 5


# -- helpers ------------------------------------------------------------------


def raw_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of `runs`, read with the stdlib module as another program would."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        conn.close()


def raw_row(path: Path, run_id: str) -> dict[str, Any]:
    (row,) = [r for r in raw_rows(path) if r["id"] == run_id]
    return row


def event_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM run_events").fetchone()[0])
    finally:
        conn.close()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """stderr of a command that must have failed cleanly."""
    assert result.returncode != 0, f"expected failure, got: {result.stdout}"
    assert "Traceback" not in result.stderr
    assert result.stderr.strip(), "an error must say what went wrong"
    return result.stderr


def submit(runsup: Runsup, *args: str, template: str = "erlang-demo") -> str:
    out = ok(runsup("submit", "--template", template, *args)).strip()
    assert RUN_ID.match(out), out
    return out


def launch(store: Store, run_id: str) -> None:
    process = ProcessRecord(
        pid=4242, pgid=4242, start_ticks=1, boot_id="b", keeper_pid=4241, keeper_start_ticks=1
    )
    assert store.mark_running(run_id, process, run_dir=f"/tmp/{run_id}")


@pytest.fixture
def store(runsup: Runsup) -> Iterator[Store]:
    """A store on the database the command uses by default in this environment."""
    runsup.state_dir.mkdir(parents=True)
    opened = Store.open(f"sqlite:///{runsup.db_path}")
    yield opened
    opened.close()


# -- submit and list --------------------------------------------------------------


def test_submit_prints_an_id_and_the_run_is_pending_everywhere(runsup: Runsup) -> None:
    run_id = submit(runsup)

    table = ok(runsup("list"))
    (line,) = [ln for ln in table.splitlines() if ln.startswith(run_id)]
    assert "PENDING" in line and "erlang-demo" in line

    listed = json.loads(ok(runsup("list", "--json")))
    (entry,) = [r for r in listed if r["id"] == run_id]
    assert entry["status"] == "PENDING"
    assert entry["template"] == "erlang-demo"

    row = raw_row(runsup.db_path, run_id)
    assert row["status"] == "PENDING"
    assert row["template"] == "erlang-demo"
    assert json.loads(row["config_json"]) == {}
    assert TIMESTAMP_TEXT.match(row["created_at"])
    assert row["pid"] is None and row["started_at"] is None
    conn = sqlite3.connect(runsup.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_list_of_empty_database(runsup: Runsup) -> None:
    ok(runsup("db", "upgrade"))  # list never creates one (test_first_hour.py)
    assert ok(runsup("list")).strip() == "no runs"
    assert json.loads(ok(runsup("list", "--json"))) == []


def test_submit_json_output(runsup: Runsup) -> None:
    record = json.loads(ok(runsup("submit", "-t", "erlang-demo", "--name", "Läuft", "--json")))
    assert RUN_ID.match(record["id"])
    assert record["status"] == "PENDING" and record["name"] == "Läuft"
    assert raw_row(runsup.db_path, record["id"])["name"] == "Läuft"


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_option_before_or_after_the_command(
    runsup: Runsup, tmp_path: Path, where: str
) -> None:
    db = tmp_path / "elsewhere" / "runs.db"
    config = tmp_path / "runsup.toml"
    config.write_text(
        f'database = "{db}"\n[templates.mine]\ncommand = ["{{python}}", "-c", "pass"]\n',
        encoding="utf-8",
    )
    args = ["submit", "--template", "mine"]
    args = (
        ["--config", str(config), *args] if where == "before" else [*args, "--config", str(config)]
    )
    run_id = ok(runsup(*args)).strip()
    assert raw_row(db, run_id)["template"] == "mine"
    assert not runsup.db_path.exists()  # the default database was not used


# -- submit validation ----------------------------------------------------------


BAD_SUBMITS = {
    "unknown template": (["--template", "nope"], "nope"),
    "config JSON is a list": (["-t", "erlang-demo", "--config-json", "[1, 2]"], "object"),
    "config JSON is a string": (["-t", "erlang-demo", "--config-json", '"x"'], "object"),
    "config JSON invalid": (["-t", "erlang-demo", "--config-json", "{"], "JSON"),
    "config file missing": (["-t", "erlang-demo", "--config-file", "missing.json"], "missing"),
    "config file a directory": (["-t", "erlang-demo", "--config-file", "."], "--config-file"),
    "config file invalid": (["-t", "erlang-demo", "--config-file", "bad.json"], "bad.json"),
    "config file a list": (["-t", "erlang-demo", "--config-file", "list.json"], "object"),
    "both config options": (
        ["-t", "erlang-demo", "--config-json", "{}", "--config-file", "good.json"],
        "not both",
    ),
    "set without =": (["-t", "erlang-demo", "--set", "novalue"], "KEY=VALUE"),
    "set without key": (["-t", "erlang-demo", "--set", "=1"], "KEY=VALUE"),
    "set through a scalar": (["-t", "erlang-demo", "--set", "a=1", "--set", "a.b=2"], "'a'"),
    "no template": (["--name", "x"], "template"),
}


@pytest.mark.parametrize("case", BAD_SUBMITS, ids=str)
def test_bad_submit_writes_nothing(runsup: Runsup, store: Store, case: str) -> None:
    args, fragment = BAD_SUBMITS[case]
    (runsup.home / "bad.json").write_text("{not json", encoding="utf-8")
    (runsup.home / "list.json").write_text("[1]", encoding="utf-8")
    (runsup.home / "good.json").write_text("{}", encoding="utf-8")
    existing = store.submit("erlang-demo", "{}").id
    rows_before, events_before = raw_rows(runsup.db_path), event_count(runsup.db_path)

    result = runsup("submit", *args)

    assert fragment in failed(result)
    assert result.stdout == ""
    assert raw_rows(runsup.db_path) == rows_before
    assert [r["id"] for r in rows_before] == [existing]
    assert event_count(runsup.db_path) == events_before


def test_set_nests_and_types_values(runsup: Runsup) -> None:
    run_id = submit(
        with_free_template(runsup),
        "--set", "a.b=1",
        "--set", "c=x",
        "--set", "d.e.f=true",
        "--set", "g=[1, 2.5]",
        "--set", "h=2.5",
        "--set", "n=null",
        "--set", 's="quoted"',
        "--set", "eq=a=b",
        "--set", "a.z=0",
        template=FREE_TEMPLATE,
    )  # fmt: skip
    config = json.loads(raw_row(runsup.db_path, run_id)["config_json"])
    assert config == {
        "a": {"b": 1, "z": 0},
        "c": "x",
        "d": {"e": {"f": True}},
        "g": [1, 2.5],
        "h": 2.5,
        "n": None,
        "s": "quoted",
        "eq": "a=b",
    }


def test_set_merges_into_config_json_and_file(runsup: Runsup) -> None:
    base = '{"a": {"keep": 1, "b": 0}, "c": "old", "other": [1]}'
    free = with_free_template(runsup)
    sets = ("--set", "a.b=1", "--set", "c=x")
    from_json = submit(free, "--config-json", base, *sets, template=FREE_TEMPLATE)
    (runsup.home / "base.json").write_text(base, encoding="utf-8")
    from_file = submit(free, "--config-file", "base.json", *sets, template=FREE_TEMPLATE)
    expected = {"a": {"keep": 1, "b": 1}, "c": "x", "other": [1]}
    for run_id in (from_json, from_file):
        assert json.loads(raw_row(runsup.db_path, run_id)["config_json"]) == expected


# -- show -----------------------------------------------------------------------


def test_show_json_has_the_run_and_its_events(runsup: Runsup, store: Store) -> None:
    run_id = submit(runsup, "--name", "shown")
    launch(store, run_id)
    shown = json.loads(ok(runsup("show", run_id, "--json")))
    assert shown["id"] == run_id and shown["status"] == "RUNNING" and shown["name"] == "shown"
    assert [(e["from_status"], e["to_status"]) for e in shown["events"]] == [
        (None, "PENDING"),
        ("PENDING", "RUNNING"),
    ]
    assert shown["events"][0]["reason"] == "submitted"

    text = ok(runsup("show", run_id))
    assert run_id in text and "RUNNING" in text and "history" in text


def test_show_unknown_id(runsup: Runsup, store: Store) -> None:
    assert "0123456789ab" in failed(runsup("show", "0123456789ab"))


# -- cancel -----------------------------------------------------------------------


def test_cancel_unknown_id(runsup: Runsup, store: Store) -> None:
    assert "0123456789ab" in failed(runsup("cancel", "0123456789ab"))


def test_cancel_pending_run(runsup: Runsup) -> None:
    run_id = submit(runsup)
    out = ok(runsup("cancel", run_id))
    assert run_id in out and "cancel requested" in out
    row = raw_row(runsup.db_path, run_id)
    assert TIMESTAMP_TEXT.match(row["cancel_requested_at"])
    assert row["status"] == "PENDING"  # only the daemon changes the status

    again = ok(runsup("cancel", run_id))
    assert "already requested" in again
    assert raw_row(runsup.db_path, run_id) == row


@pytest.mark.parametrize("final", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_cancel_finished_run_changes_nothing(
    runsup: Runsup, store: Store, final: RunStatus
) -> None:
    run_id = store.submit("erlang-demo", "{}").id
    launch(store, run_id)
    assert store.finish(run_id, final, reason="test", exit_code=0)
    before = raw_row(runsup.db_path, run_id)

    out = ok(runsup("cancel", run_id))

    assert f"already {final.value}" in out and "nothing to cancel" in out
    assert raw_row(runsup.db_path, run_id) == before


def test_cancel_json(runsup: Runsup) -> None:
    run_id = submit(runsup)
    answer = json.loads(ok(runsup("cancel", run_id, "--json")))
    assert answer["id"] == run_id and answer["cancel_requested"] is True
    assert answer["cancel_requested_at"]


# -- list --status ----------------------------------------------------------------


def test_list_status_filter(runsup: Runsup, store: Store) -> None:
    pending = store.submit("erlang-demo", "{}").id
    running = store.submit("erlang-demo", "{}").id
    launch(store, running)

    out = ok(runsup("list", "--status", "pending"))
    assert pending in out and running not in out

    listed = json.loads(ok(runsup("list", "--status", "RuNNing", "--json")))
    assert [r["id"] for r in listed] == [running]

    assert json.loads(ok(runsup("list", "-s", "completed", "--json"))) == []

    assert "bogus" in failed(runsup("list", "--status", "bogus")).lower()


# -- the module entry point and help ----------------------------------------------


def test_python_dash_m_supervisor_help(runsup: Runsup) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "--help"],
        env=runsup.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = ok(result)
    for command in ("daemon", "submit", "list", "show", "cancel", "logs", "watch", "db"):
        assert command in out


def test_version(runsup: Runsup) -> None:
    assert "0.1.0" in ok(runsup("--version"))


# -- startup time (measured and printed, never asserted: see bench/cli_startup.py) ----


def test_list_wall_time_is_reported(
    runsup: Runsup, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {store.submit("erlang-demo", json.dumps({"i": i})).id for i in range(10)}
    ok(runsup("list"))  # the first run may pay for cold caches
    times = []
    for _ in range(TIMING_RUNS):
        started = time.perf_counter()
        out = ok(runsup("list"))
        times.append(time.perf_counter() - started)
        assert {ln.split()[0] for ln in out.splitlines()[1:]} == ids
    with capsys.disabled():
        print(
            f"\n`runsup list` on {len(ids)} rows over {TIMING_RUNS} runs: "
            f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
            f"max {max(times):.3f} s"
        )
