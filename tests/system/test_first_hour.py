"""What a new user meets in the first hour (issue 24, SPEC section 7), through the installed
`runsup`: the no-daemon warning, read-only commands that never create a database, one-line
errors, sweep values, the reload and retry hints, pause hints, id prefixes, --json everywhere,
resubmit's options, list and show agreeing, and erlang-demo's keys."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from daemon_harness import DaemonHarness
from free_template import FREE_TEMPLATE, with_free_template

from supervisor import demo_sim
from supervisor.heartbeat import heartbeat_path
from supervisor.states import RunStatus

if TYPE_CHECKING:
    from conftest import Runsup

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
README = Path(__file__).resolve().parents[2] / "README.md"
NO_DAEMON = "no daemon has"
STALE_HEARTBEAT_SECONDS = 120  # well past cliopen.NO_DAEMON_AFTER_SECONDS
DEMO_TIMEOUT_SECONDS = 300  # the demo's tour, on a loaded machine
PASTE_TIMEOUT_SECONDS = 300  # the README's first-hour block, a run watched to its end
SIM_DEADLINE_SECONDS = 60  # a demo simulation's start and end under load


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that must fail with one clear line and no traceback."""
    assert result.returncode != 0, f"expected a failure, got: {result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("runsup: error: "), result.stderr
    return lines[0]


def submit(runsup: Runsup, *args: str, template: str = "erlang-demo") -> list[str]:
    ids = ok(runsup("submit", "--template", template, *args)).split()
    assert ids and all(RUN_ID.match(i) for i in ids), ids
    return ids


def unwritable_dir(tmp: Path) -> Path:
    """A folder nothing may be created in, also for root (who writes through mode bits)."""
    if os.geteuid() != 0:
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "sub"
    # sysfs refuses mkdir with EPERM whatever the caller's privileges.
    return Path("/sys/runsup-first-hour-test")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    (tmp_path / "d").mkdir()
    h = DaemonHarness(tmp_path / "d", cancel_grace_seconds=1)
    yield h
    h.close()


@pytest.fixture
def d_runsup(runsup: Runsup, harness: DaemonHarness) -> Runsup:
    """`runsup` pointed at the harness's configuration (its database, runs_dir, templates)."""
    from dataclasses import replace

    return replace(runsup, env={**runsup.env, "RUNSUP_CONFIG": str(harness.config)})


# -- 1. no daemon ----------------------------------------------------------------


def test_submit_cancel_resubmit_watch_warn_when_no_daemon_serves(
    d_runsup: Runsup, harness: DaemonHarness
) -> None:
    result = d_runsup("submit", "-t", "sh")
    run_id = ok(result).strip()
    assert NO_DAEMON in result.stderr and "ever served" in result.stderr
    assert str(harness.db_path) in result.stderr
    assert NO_DAEMON in d_runsup("resubmit", run_id).stderr
    assert NO_DAEMON in d_runsup("cancel", run_id).stderr
    # A heartbeat older than a minute: the daemon is gone.
    beat = heartbeat_path(harness.db_path, harness.runs_dir)
    beat.touch()
    old = time.time() - STALE_HEARTBEAT_SECONDS
    os.utime(beat, (old, old))
    stale = d_runsup("submit", "-t", "sh")
    assert "no daemon has served" in stale.stderr and "2 minutes" in stale.stderr
    harness.start()
    served = d_runsup("submit", "-t", "sh")
    ok(served)
    assert NO_DAEMON not in served.stderr


def test_check_says_whether_a_daemon_serves(d_runsup: Runsup, harness: DaemonHarness) -> None:
    """A configuration can be ready with nobody serving it: check says so on its daemon line."""
    ok(d_runsup("db", "upgrade"))
    absent = d_runsup("check", "--json")
    (line,) = [c for c in json.loads(absent.stdout)["checks"] if c["name"] == "daemon"]
    assert line["status"] == "warn" and "no daemon has ever served" in line["detail"]
    assert "runsup daemon" in line["fix"]
    harness.start()
    served = d_runsup("check", "--json")
    (line,) = [c for c in json.loads(served.stdout)["checks"] if c["name"] == "daemon"]
    assert line["status"] == "ok", line


def test_watch_warns_when_no_daemon_serves(d_runsup: Runsup, harness: DaemonHarness) -> None:
    (run_id,) = submit(d_runsup, template="sh")
    ok(d_runsup("cancel", run_id))  # PENDING + cancel asked: watch still waits for a daemon
    harness.start()
    harness.wait_final(run_id)
    harness.stop()
    beat = heartbeat_path(harness.db_path, harness.runs_dir)
    old = time.time() - STALE_HEARTBEAT_SECONDS
    os.utime(beat, (old, old))
    result = d_runsup("watch", run_id)
    assert result.returncode == 1  # it was CANCELLED
    assert "no daemon has served" in result.stderr


# -- 2. read-only commands never create a database -----------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("list",),
        ("show", "0123456789ab"),
        ("logs", "0123456789ab"),
        ("watch",),
        ("metrics",),
        ("results",),
    ],
)
def test_read_only_commands_never_create_a_database(
    runsup: Runsup, tmp_path: Path, args: tuple[str, ...]
) -> None:
    wrong = tmp_path / "typo" / "run.db"
    error = one_line_error(runsup(*args, env={"RUNSUP_DATABASE": str(wrong)}))
    assert f"no database at {wrong}" in error
    assert not wrong.exists() and not wrong.parent.exists()
    # --config /dev/null: no database setting, the default location, still not created.
    error = one_line_error(runsup("--config", "/dev/null", *args))
    assert str(runsup.db_path) in error
    assert not runsup.db_path.exists()


# -- 3. unwritable folders: one line, non-zero exit -------------------------------------


def test_a_database_folder_that_cannot_be_made_is_one_line(runsup: Runsup, tmp_path: Path) -> None:
    where = unwritable_dir(tmp_path) / "runs.db"
    env = {"RUNSUP_DATABASE": str(where)}
    for args in (("submit", "-t", "erlang-demo"), ("daemon",), ("pause",)):
        error = one_line_error(runsup(*args, env=env))
        assert "cannot create the database's folder" in error and str(where.parent) in error
    assert f"no database at {where}" in one_line_error(runsup("list", env=env))


def test_a_runs_dir_that_cannot_be_made_is_one_line(runsup: Runsup, tmp_path: Path) -> None:
    runs = unwritable_dir(tmp_path) / "runs"
    env = {"RUNSUP_DATABASE": str(tmp_path / "runs.db"), "RUNSUP_RUNS_DIR": str(runs)}
    error = one_line_error(runsup("daemon", env=env))
    assert "cannot create runs_dir" in error and str(runs) in error


def test_a_home_that_cannot_hold_the_default_state_is_one_line(
    runsup: Runsup, tmp_path: Path
) -> None:
    home = unwritable_dir(tmp_path)
    env = {"HOME": str(home), "XDG_STATE_HOME": ""}
    error = one_line_error(runsup("submit", "-t", "erlang-demo", env=env))
    assert "cannot create the database's folder" in error


# -- 4. sweep values ---------------------------------------------------------------


def test_sweep_values_split_outside_brackets_braces_and_quotes(runsup: Runsup) -> None:
    free = with_free_template(runsup)
    ids = submit(
        free,
        "--sweep", "loads=[1,2],[3,4]",
        "--sweep", 'tag=a,"b,c"',
        "--sweep", 'opt={"x":1,"y":2}',
        template=FREE_TEMPLATE,
    )  # fmt: skip
    assert len(ids) == 4
    conn = sqlite3.connect(runsup.db_path)
    try:
        configs = [json.loads(c) for (c,) in conn.execute("SELECT config_json FROM runs")]
    finally:
        conn.close()
    assert sorted(json.dumps(c, sort_keys=True) for c in configs) == sorted(
        json.dumps({"loads": loads, "tag": tag, "opt": {"x": 1, "y": 2}}, sort_keys=True)
        for loads in ([1, 2], [3, 4])
        for tag in ("a", "b,c")
    )
    error = one_line_error(free("submit", "-t", FREE_TEMPLATE, "--sweep", "loads=[1,2"))
    assert "not closed" in error


# -- 5. a template added to the file without a reload ----------------------------------


def test_a_template_in_the_file_but_not_reloaded_says_how_to_reload(
    d_runsup: Runsup, harness: DaemonHarness
) -> None:
    harness.start()
    harness.write_config('[templates.ghost]\ncommand = ["/bin/true"]\n')
    (run_id,) = submit(d_runsup, template="ghost")  # this command reads the file: it has ghost
    run = harness.wait_final(run_id)
    assert run.status == RunStatus.FAILED
    message = run.error_message or ""
    assert "unknown template 'ghost'" in message
    assert f"{harness.config} has it now" in message and "reload" in message
    # After the reload the same template runs.
    assert harness.proc is not None
    harness.proc.send_signal(signal.SIGHUP)
    harness.wait_logged("config_reloaded")
    (again,) = submit(d_runsup, template="ghost")
    assert harness.wait_final(again).status == RunStatus.COMPLETED


# -- 6. max_attempts without retry_on ----------------------------------------------------


def test_show_says_why_a_failed_run_was_not_retried(
    d_runsup: Runsup, harness: DaemonHarness
) -> None:
    harness.write_config(
        '[templates.exit2]\ncommand = ["/bin/sh", "-c", "exit 2"]\nmax_attempts = 3\n'
    )
    harness.start()
    (run_id,) = submit(d_runsup, template="exit2")
    assert harness.wait_final(run_id).status == RunStatus.FAILED
    text = ok(d_runsup("show", run_id))
    assert "not retried: exit:2 is not in retry_on (signal, lost, node_failure" in text
    shown = json.loads(ok(d_runsup("show", run_id, "--json")))
    assert shown["retry_note"].startswith("not retried: exit:2 is not in retry_on")


# -- 7. the pause banner's hint -----------------------------------------------------------


def test_the_pause_banner_names_the_template_to_resume(runsup: Runsup) -> None:
    (run_id,) = submit(runsup)
    ok(runsup("pause", "erlang-demo"))
    listing = ok(runsup("list"))
    assert "paused: template erlang-demo" in listing
    assert "(runsup resume erlang-demo)" in listing
    ok(runsup("pause"))
    assert "(runsup resume)" in ok(runsup("list"))
    ok(runsup("cancel", run_id))  # the watch below ends once the run is final
    conn = sqlite3.connect(runsup.db_path)
    try:
        with conn:
            conn.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))
    finally:
        conn.close()
    watched = runsup("watch", run_id).stdout
    assert "(runsup resume erlang-demo)" in watched and "(runsup resume)" in watched


# -- 8. submit --sweep names its sweep ---------------------------------------------------


def test_submit_sweep_names_the_sweep_id(runsup: Runsup) -> None:
    result = runsup("submit", "-t", "erlang-demo", "--sweep", "seed=1,2,3")
    ids = ok(result).split()
    assert len(ids) == 3 and all(RUN_ID.match(i) for i in ids)  # stdout: run ids only
    found = re.search(r"sweep ([0-9a-f]{12}): 3 runs", result.stderr)
    assert found, result.stderr
    sweep = found.group(1)
    listed = json.loads(ok(runsup("list", "--sweep", sweep, "--json")))
    assert sorted(r["id"] for r in listed) == sorted(ids)
    as_json = json.loads(
        ok(runsup("submit", "-t", "erlang-demo", "--sweep", "seed=4,5", "--json"))
    )
    assert len({r["sweep_id"] for r in as_json}) == 1 and RUN_ID.match(as_json[0]["sweep_id"])


# -- 9. prefixes, several ids, --json, logs, resubmit, list/show --------------------------


def test_unique_prefixes_name_runs_and_sweeps(runsup: Runsup) -> None:
    ids = submit(runsup, "--sweep", "seed=1,2,3")
    run_id = ids[0]
    shown = json.loads(ok(runsup("show", run_id[:6], "--json")))
    assert shown["id"] == run_id
    assert run_id in ok(runsup("cancel", run_id[:5]))
    short = one_line_error(runsup("show", run_id[:3]))
    assert "4 characters" in short
    sweep = json.loads(ok(runsup("show", run_id, "--json")))["sweep_id"]
    listed = json.loads(ok(runsup("list", "--sweep", sweep[:6], "--json")))
    assert len(listed) == 3
    assert "no run with id" in one_line_error(runsup("show", "ffff0000"))


def test_ambiguous_prefix_is_refused_naming_the_candidates(runsup: Runsup) -> None:
    ok(runsup("db", "upgrade"))
    conn = sqlite3.connect(runsup.db_path)
    try:
        with conn:
            for run_id in ("abcd12340000", "abcd56780000"):
                conn.execute(
                    "INSERT INTO runs (id, status, config_json, template, created_at) "
                    "VALUES (?, 'PENDING', '{}', 'erlang-demo', '2026-12-07 10:00:00.000000')",
                    (run_id,),
                )
    finally:
        conn.close()
    error = one_line_error(runsup("show", "abcd"))
    assert "ambiguous" in error and "abcd12340000" in error and "abcd56780000" in error
    assert json.loads(ok(runsup("show", "abcd1", "--json")))["id"] == "abcd12340000"


def test_cancel_takes_several_ids(runsup: Runsup) -> None:
    a, b, c = (submit(runsup)[0] for _ in range(3))
    out = ok(runsup("cancel", a, b[:6])).splitlines()
    assert len(out) == 2 and a in out[0] and b in out[1]
    rows = json.loads(ok(runsup("cancel", b, c, "--json")))
    assert [r["id"] for r in rows] == [b, c] and [r["cancel_requested"] for r in rows] == [
        False,
        True,
    ]


def test_every_command_the_readme_names_takes_json(
    d_runsup: Runsup, harness: DaemonHarness
) -> None:
    harness.start()
    (run_id,) = submit(d_runsup, template="sh")
    harness.wait_final(run_id)
    lines = ok(d_runsup("logs", run_id, "--json")).splitlines()
    assert all(json.loads(line)["id"] == run_id for line in lines)
    samples = json.loads(ok(d_runsup("metrics", "--json")))
    assert any(s["name"] == "runsup_runs" for s in samples)
    watched = d_runsup("watch", run_id, "--json")
    assert watched.returncode == 1  # the run FAILED (the script is missing)
    changes = [json.loads(x) for x in watched.stdout.splitlines()]
    assert changes and changes[-1]["id"] == run_id and changes[-1]["status"] == "FAILED"
    upgraded = json.loads(ok(d_runsup("db", "upgrade", "--json")))
    assert upgraded["database"] == str(harness.db_path) and upgraded["revision"]


def test_demo_takes_json(runsup: Runsup, tmp_path: Path) -> None:
    state = str(tmp_path / "demo")
    result = runsup("demo", "--json", "--state-dir", state, timeout=DEMO_TIMEOUT_SECONDS)
    document = json.loads(ok(result))
    assert len(document["runs"]) == 4
    assert all(r["status"] == "COMPLETED" for r in document["runs"])
    assert document["results"] and all("exact" in row for row in document["results"])
    assert "run-supervisor demo" in result.stderr  # the tour went to stderr


def test_logs_of_a_run_that_never_started_says_so(runsup: Runsup) -> None:
    (run_id,) = submit(runsup)
    conn = sqlite3.connect(runsup.db_path)
    try:
        with conn:
            conn.execute(
                "UPDATE runs SET status = 'FAILED', error_message = 'cannot start: no such file' "
                "WHERE id = ?",
                (run_id,),
            )
    finally:
        conn.close()
    result = runsup("logs", run_id)
    assert result.returncode == 0
    assert "never started" in result.stderr and "cannot start: no such file" in result.stderr
    assert "has no log yet" not in result.stderr


def test_resubmit_takes_priority_name_and_after(runsup: Runsup) -> None:
    (first,) = submit(runsup, "--name", "base", "--priority", "1")
    (other,) = submit(runsup)
    new = ok(
        runsup(
            "resubmit", first[:6], "--priority", "9", "--name", "again",
            "--after", other, "--set", "seed=7",
        )
    ).strip()  # fmt: skip
    shown = json.loads(ok(runsup("show", new, "--json")))
    assert shown["priority"] == 9 and shown["name"] == "again"
    assert json.loads(shown["config_json"]) == {"seed": 7}
    assert [d["depends_on"] for d in shown["dependencies"]] == [other]
    kept = json.loads(ok(runsup("show", ok(runsup("resubmit", first)).strip(), "--json")))
    assert kept["priority"] == 1 and kept["name"] == "base"


def test_list_and_show_agree_on_progress_priority_and_attempt(
    d_runsup: Runsup, harness: DaemonHarness
) -> None:
    harness.write_config('[templates.quiet]\ncommand = ["/bin/true"]\n')
    harness.start()
    (run_id,) = submit(d_runsup, template="quiet")
    assert harness.wait_final(run_id).status == RunStatus.COMPLETED
    listed = ok(d_runsup("list"))
    row = next(line for line in listed.splitlines() if line.startswith(run_id))
    assert "100%" in row
    text = ok(d_runsup("show", run_id))
    assert re.search(r"^progress\s+100%", text, re.MULTILINE), text
    assert "priority 0, attempt 1" in text
    shown = json.loads(ok(d_runsup("show", run_id, "--json")))
    assert shown["priority"] == 0 and shown["attempt"] == 1


# -- 10. erlang-demo's keys -----------------------------------------------------------------


def test_erlang_demo_refuses_a_misspelt_key_and_its_keys_are_documented(
    runsup: Runsup,
) -> None:
    error = one_line_error(runsup("submit", "-t", "erlang-demo", "--set", "chanels=20"))
    assert "'chanels'" in error and "did you mean 'channels'" in error
    assert not runsup.db_path.exists() or json.loads(ok(runsup("list", "--json"))) == []
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("### erlang-demo's config keys") :]
    for key in demo_sim._CONFIG_KEYS:
        assert f"`{key}`" in section, key


def test_a_misspelt_key_written_by_another_program_fails_the_run_naming_it(
    harness: DaemonHarness,
) -> None:
    harness.start()
    run_id = harness.submit({"chanels": 20}, template="erlang-demo")
    run = harness.wait_final(run_id, deadline=SIM_DEADLINE_SECONDS)
    assert run.status == RunStatus.FAILED
    assert "chanels" in (run.error_message or "")


# -- README: the first hour, pasted into a new shell -------------------------------------------


def end_processes_under(folder: Path) -> None:
    """Kill what the pasted block may have left (a daemon, a run): processes working there."""
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info["cwd"]
        if cwd and Path(cwd).is_relative_to(folder) and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()


def first_hour_block() -> str:
    """The shell block of the README's "The first hour" section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("```sh\n", text.index("## The first hour")) + len("```sh\n")
    return text[start : text.index("```\n", start)]


def test_the_readme_first_hour_works_pasted_into_a_new_shell(tmp_path: Path) -> None:
    block = first_hour_block()
    install, rest = block.split("\n", 1)
    assert install.startswith("python3 -m venv .venv && .venv/bin/pip install")
    for step in ("runsup daemon", "runsup submit", "runsup watch", "runsup cancel"):
        assert step in rest, step
    # The clone's venv is this test environment's (installing it again would take minutes;
    # the install line itself was pasted by hand into a fresh clone, see the report).
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(Path(sys.prefix))
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "TERM": "dumb"}
    try:
        result = subprocess.run(
            ["bash", "--norc", "--noprofile", "-i"],
            input=rest,
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=PASTE_TIMEOUT_SECONDS,
            check=False,
        )
    finally:
        end_processes_under(tmp_path)
    out = result.stdout
    assert "command not found" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"first\s+COMPLETED", out) or "1 run ended: 1 completed" in out, out
    assert "cancel requested" in out, out
    assert re.search(r"^name\s+first$", out, re.MULTILINE), out  # show by an id's prefix
    listing = out[out.rindex("ID ") :]
    assert re.search(r"second\s+erlang-demo\s+(CANCELLED|PENDING|RUNNING)", listing), listing
    state = home / ".local" / "state" / "run-supervisor"
    assert (state / "runs.db").exists()
    daemon_log = (clone / "runsup-daemon.log").read_text()
    assert "daemon_ready" in daemon_log, daemon_log
