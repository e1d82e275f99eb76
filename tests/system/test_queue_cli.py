"""The queue's commands (SPEC sections 7 and 11) through the installed `runsup`, no daemon."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from free_template import FREE_TEMPLATE, with_free_template

from supervisor.db import Store

if TYPE_CHECKING:
    from conftest import Runsup

RUN_ID = re.compile(r"^[0-9a-f]{12}$")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"expected failure, got: {result.stdout}"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("runsup: error: "), result.stderr
    return result.stderr


def rows(path: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def submit(runsup: Runsup, *args: str, template: str = "erlang-demo") -> list[str]:
    ids = ok(runsup("submit", "--template", template, *args)).split()
    assert ids and all(RUN_ID.match(i) for i in ids), ids
    return ids


def test_submit_priority_and_dependencies_are_stored(runsup: Runsup) -> None:
    (a,) = submit(runsup)
    (b,) = submit(runsup)
    (c,) = submit(runsup, "--priority", "7", "--after", a, "--after-any", b)
    row = rows(runsup.db_path, "SELECT priority, status FROM runs WHERE id = ?", c)[0]
    assert row == {"priority": 7, "status": "PENDING"}
    deps = rows(
        runsup.db_path,
        "SELECT depends_on, kind FROM run_dependencies WHERE run_id = ? ORDER BY kind",
        c,
    )
    assert deps == [{"depends_on": b, "kind": "afterany"}, {"depends_on": a, "kind": "afterok"}]
    shown = json.loads(ok(runsup("show", c, "--json")))
    assert {d["depends_on"]: d["status"] for d in shown["dependencies"]} == {
        a: "PENDING",
        b: "PENDING",
    }


def test_submit_refuses_a_missing_dependency_and_writes_nothing(runsup: Runsup) -> None:
    (a,) = submit(runsup)
    err = failed(
        runsup("submit", "--template", "erlang-demo", "--after", a, "--after", "0123456789ab")
    )
    assert "no run with id" in err and "0123456789ab" in err
    err = failed(
        runsup("submit", "-t", "erlang-demo", "--sweep", "seed=1,2", "--after-any", "fedcba987654")
    )
    assert "fedcba987654" in err
    assert [r["id"] for r in rows(runsup.db_path, "SELECT id FROM runs")] == [a]
    assert rows(runsup.db_path, "SELECT * FROM run_dependencies") == []


def test_sweep_of_24_in_one_transaction(runsup: Runsup) -> None:
    free = with_free_template(runsup)
    axes = ("--sweep", "channels=10,20,40", "--sweep", "load=5,10,15,20.5")
    ids = submit(free, *axes, template=FREE_TEMPLATE)
    assert len(ids) == 12
    axes = ("--sweep", "a=1,2,3,4,5,6", "--sweep", "b=x,y,z,w", "--set", "c=1")
    ids += submit(free, *axes, template=FREE_TEMPLATE)
    assert len(ids) == 36
    last = ids[12:]
    marks = ",".join("?" * len(last))
    got = rows(
        runsup.db_path,
        f"SELECT id, name, sweep_id, config_json, created_at FROM runs WHERE id IN ({marks})",
        *last,
    )
    assert len(got) == 24
    assert len({r["sweep_id"] for r in got}) == 1
    sweep = got[0]["sweep_id"]
    assert RUN_ID.match(sweep)
    assert len({r["created_at"] for r in got}) == 1  # one transaction, one time
    names = {r["name"] for r in got}
    assert "a=1 b=x" in names and "a=6 b=w" in names and len(names) == 24
    configs = [json.loads(r["config_json"]) for r in got]
    assert {"a": 3, "b": "z", "c": 1} in configs  # numbers parsed as with --set
    listed = json.loads(ok(runsup("list", "--sweep", sweep, "--json")))
    assert sorted(r["id"] for r in listed) == sorted(last)
    cancelled = ok(runsup("cancel", "--sweep", sweep)).splitlines()
    assert len(cancelled) == 24 and all("cancel requested" in line for line in cancelled)
    asked = rows(
        runsup.db_path,
        "SELECT count(*) AS n FROM runs WHERE sweep_id = ? AND cancel_requested_at IS NOT NULL",
        sweep,
    )
    assert asked == [{"n": 24}]
    first_sweep = rows(runsup.db_path, "SELECT count(*) AS n FROM runs WHERE sweep_id != ?", sweep)
    assert first_sweep == [{"n": 12}]


def test_sweep_refusals(runsup: Runsup) -> None:
    ok(runsup("db", "upgrade"))  # watch never creates a database
    assert "expected KEY=V1,V2" in failed(runsup("submit", "-t", "erlang-demo", "--sweep", "x"))
    assert "empty value" in failed(runsup("submit", "-t", "erlang-demo", "--sweep", "x=1,,2"))
    assert "more than once" in failed(
        runsup("submit", "-t", "erlang-demo", "--sweep", "x=1", "--sweep", "x=2")
    )
    assert "no sweep" in failed(runsup("watch", "--sweep", "0123456789ab"))
    assert "no sweep" in failed(runsup("cancel", "--sweep", "0123456789ab"))
    assert "one of the two" in failed(runsup("cancel"))
    assert "one of the two" in failed(runsup("watch", "0123456789ab", "--sweep", "0123456789ab"))


def test_priority_only_on_pending(runsup: Runsup) -> None:
    (a,) = submit(runsup)
    assert "priority 5" in ok(runsup("priority", a, "5"))
    assert rows(runsup.db_path, "SELECT priority FROM runs WHERE id = ?", a) == [{"priority": 5}]
    assert "priority 5, not started yet" in ok(runsup("show", a))
    store = Store.open(f"sqlite:///{runsup.db_path}")
    try:
        store.request_cancel(a)
        from supervisor.states import RunStatus

        assert store.transition(a, RunStatus.CANCELLED, reason="test")
    finally:
        store.close()
    err = failed(runsup("priority", a, "9"))
    assert "is CANCELLED" in err and "PENDING" in err
    assert "no run with id" in failed(runsup("priority", "0123456789ab", "1"))


def test_pause_and_resume_write_queue_pauses_and_list_shows_them(runsup: Runsup) -> None:
    submit(runsup)
    assert "paused the whole queue" in ok(runsup("pause", "--reason", "fixing input"))
    assert "already paused" in ok(runsup("pause"))
    assert "template erlang-demo" in ok(runsup("pause", "erlang-demo"))
    assert "unknown template 'nope'" in failed(runsup("pause", "nope"))
    scopes = rows(runsup.db_path, "SELECT scope, reason FROM queue_pauses ORDER BY scope")
    assert scopes == [
        {"scope": "*", "reason": "fixing input"},
        {"scope": "erlang-demo", "reason": None},
    ]
    listing = ok(runsup("list"))
    assert "paused: the whole queue" in listing and "fixing input" in listing
    assert "paused: template erlang-demo" in listing
    assert "resumed the whole queue" in ok(runsup("resume"))
    assert "was not paused" in ok(runsup("resume"))
    ok(runsup("resume", "erlang-demo"))
    assert rows(runsup.db_path, "SELECT * FROM queue_pauses") == []
    assert "paused" not in ok(runsup("list"))


def test_resubmit_copies_template_and_config_with_sets(runsup: Runsup) -> None:
    free = with_free_template(runsup)
    sets = ("--set", "erlangs=[1,2]", "--set", "seed=3", "--name", "base")
    (a,) = submit(free, *sets, template=FREE_TEMPLATE)
    (b,) = ok(free("resubmit", a, "--set", "seed=4")).split()
    assert b != a
    row = rows(runsup.db_path, "SELECT * FROM runs WHERE id = ?", b)[0]
    assert row["status"] == "PENDING" and row["template"] == FREE_TEMPLATE
    assert json.loads(row["config_json"]) == {"erlangs": [1, 2], "seed": 4}
    assert "no run with id" in failed(runsup("resubmit", "0123456789ab"))


def test_help_names_every_new_option(runsup: Runsup) -> None:
    text = ok(runsup("submit", "--help"))
    for option in ("--priority", "--after", "--after-any", "--sweep"):
        assert option in text
    for command, option in (("list", "--sweep"), ("cancel", "--sweep"), ("watch", "--sweep")):
        assert option in ok(runsup(command, "--help"))
    for command in ("priority", "pause", "resume", "resubmit"):
        assert "Usage: runsup " + command in ok(runsup(command, "--help"))


def test_watch_shows_pauses(runsup: Runsup) -> None:
    (a,) = submit(runsup)
    store = Store.open(f"sqlite:///{runsup.db_path}")
    try:
        from supervisor.states import RunStatus

        assert store.transition(a, RunStatus.CANCELLED, reason="test")
    finally:
        store.close()
    ok(runsup("pause", "erlang-demo", "--reason", "new input"))
    result = runsup("watch", a)
    assert result.returncode == 1  # the run was cancelled
    assert "paused: template erlang-demo" in result.stdout and "new input" in result.stdout
