"""Configuration: defaults, a full file, RUNSUP_* overrides, and errors people can act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from supervisor.errors import ConfigError
from supervisor.settings import BUILTIN_TEMPLATES, load_settings

if TYPE_CHECKING:
    from conftest import Runsup

SPEC_DEMO_COMMAND = ("{python}", "-m", "supervisor.demo_sim", "--config", "{config_path}")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults -----------------------------------------------------------------


def test_state_directory_wins() -> None:
    env = {"STATE_DIRECTORY": "/srv/a:/srv/b", "XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}
    settings = load_settings(environ=env)
    assert settings.database_path == Path("/srv/a/runs.db")
    assert settings.runs_dir == Path("/srv/a/runs")


def test_xdg_state_home_next() -> None:
    settings = load_settings(environ={"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"})
    assert settings.database_path == Path("/xdg/run-supervisor/runs.db")
    assert settings.runs_dir == Path("/xdg/run-supervisor/runs")


def test_home_last() -> None:
    settings = load_settings(environ={"HOME": "/home/u"})
    assert settings.database == "/home/u/.local/state/run-supervisor/runs.db"
    assert settings.database_url == "sqlite:////home/u/.local/state/run-supervisor/runs.db"
    assert settings.runs_dir == Path("/home/u/.local/state/run-supervisor/runs")


def test_other_defaults() -> None:
    settings = load_settings(environ={"HOME": "/home/u"})
    assert settings.max_concurrent_runs == len(os.sched_getaffinity(0))
    assert settings.max_concurrent_runs >= 1
    assert settings.cancel_grace_seconds == 10
    assert settings.on_stop == "detach"
    assert settings.config_file is None
    demo = settings.templates["erlang-demo"]
    assert demo.command == SPEC_DEMO_COMMAND
    assert demo.config_format == "json"
    assert demo.config_filename == "config.json"
    assert dict(demo.env) == {"OMP_NUM_THREADS": "1"}
    assert demo.timeout_seconds is None


def test_runsup_config_variable_names_the_file(tmp_path: Path) -> None:
    from_env = write(tmp_path / "env.toml", "max_concurrent_runs = 3\n")
    from_flag = write(tmp_path / "flag.toml", "max_concurrent_runs = 5\n")
    env = {"HOME": str(tmp_path), "RUNSUP_CONFIG": str(from_env)}
    assert load_settings(environ=env).max_concurrent_runs == 3
    assert load_settings(environ=env).config_file == from_env
    assert load_settings(from_flag, environ=env).max_concurrent_runs == 5


# -- a full file ----------------------------------------------------------------

FULL_FILE = """
database = "state/runs.db"
runs_dir = "/data/runs"
max_concurrent_runs = 6
cancel_grace_seconds = 2.5
on_stop = "cancel"

[templates.fusion]
command = ["/opt/fusion/bin/sim", "--ini", "{config_path}", "--out", "{run_dir}/out",
           "--id={run_id}", "--progress", "{progress_path}"]
config_format = "ini"
env = { OMP_NUM_THREADS = "4", FUSION_HOME = "/opt/fusion" }
timeout_seconds = 7200

[templates.erlang-demo]
command = ["{python}", "-m", "supervisor.demo_sim", "--config", "{config_path}", "--fast"]
"""


def test_full_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path / "conf.toml", FULL_FILE)
    settings = load_settings(path, environ={"HOME": "/home/u"})

    assert settings.database == str(tmp_path.resolve() / "state" / "runs.db")  # beside the file
    assert settings.runs_dir == Path("/data/runs")
    assert settings.max_concurrent_runs == 6
    assert settings.cancel_grace_seconds == 2.5
    assert settings.on_stop == "cancel"
    assert settings.config_file == path

    fusion = settings.templates["fusion"]
    assert fusion.config_format == "ini" and fusion.config_filename == "config.ini"
    assert dict(fusion.env) == {"OMP_NUM_THREADS": "4", "FUSION_HOME": "/opt/fusion"}
    assert fusion.timeout_seconds == 7200
    values = {
        "config_path": "/r/abc/config.ini",
        "run_dir": "/r/abc",
        "run_id": "abc",
        "progress_path": "/r/abc/progress.jsonl",
        "python": "/usr/bin/python3",
    }
    assert fusion.render_command(values) == [
        "/opt/fusion/bin/sim",
        "--ini",
        "/r/abc/config.ini",
        "--out",
        "/r/abc/out",
        "--id=abc",
        "--progress",
        "/r/abc/progress.jsonl",
    ]
    assert settings.templates["erlang-demo"].command[-1] == "--fast"
    assert BUILTIN_TEMPLATES["erlang-demo"].command == SPEC_DEMO_COMMAND  # not mutated


def test_database_url_kept_as_given(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'database = "sqlite:////var/x/runs.db"\n')
    settings = load_settings(path, environ={"HOME": "/home/u"})
    assert settings.database_url == "sqlite:////var/x/runs.db"
    assert settings.database_path == Path("/var/x/runs.db")


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.toml", "")
    settings = load_settings(path, environ={"HOME": "/home/u"})
    assert settings.database_path == Path("/home/u/.local/state/run-supervisor/runs.db")
    assert set(settings.templates) == {"erlang-demo"}


# -- RUNSUP_* overrides ---------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "conf.toml", FULL_FILE)
    env = {
        "HOME": "/home/u",
        "RUNSUP_DATABASE": "/env/runs.db",
        "RUNSUP_RUNS_DIR": "/env/runs",
        "RUNSUP_MAX_CONCURRENT": "2",
    }
    settings = load_settings(path, environ=env)
    assert settings.database_path == Path("/env/runs.db")
    assert settings.runs_dir == Path("/env/runs")
    assert settings.max_concurrent_runs == 2
    assert settings.on_stop == "cancel"  # the rest still from the file


def test_environment_database_url() -> None:
    settings = load_settings(environ={"HOME": "/h", "RUNSUP_DATABASE": "sqlite:////e/r.db"})
    assert settings.database_url == "sqlite:////e/r.db"


@pytest.mark.parametrize("value", ["0", "x", "-2", "1.5"])
def test_bad_max_concurrent_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HOME": "/h", "RUNSUP_MAX_CONCURRENT": value})
    message = str(info.value)
    assert "RUNSUP_MAX_CONCURRENT" in message
    assert repr(value) in message
    assert "expected" in message


# -- errors ---------------------------------------------------------------------

TEMPLATE = '[templates.t]\ncommand = ["sim"]\n'
BAD_FILES = {
    "unknown top-level key": ('colour = "red"\n', ["colour", "unknown key"]),
    "unknown template key": (TEMPLATE + "shell = true\n", ["templates.t.shell", "unknown key"]),
    "wrong type, limit": ('max_concurrent_runs = "four"\n', ["max_concurrent_runs", "whole"]),
    "wrong type, database": ("database = 5\n", ["database", "string", "5"]),
    "wrong type, templates": ("templates = 5\n", ["templates", "table"]),
    "template not a table": ('[templates]\nt = "sim"\n', ["templates.t", "table"]),
    "template without command": ("[templates.t]\nenv = {}\n", ["templates.t.command"]),
    "empty command": ("[templates.t]\ncommand = []\n", ["templates.t.command", "non-empty"]),
    "command as a string": (
        '[templates.t]\ncommand = "sim --x"\n',
        ["templates.t.command", "list"],
    ),
    "command with an empty program": ('[templates.t]\ncommand = [""]\n', ["templates.t.command"]),
    "negative limit": ("max_concurrent_runs = -1\n", ["max_concurrent_runs", ">= 1", "-1"]),
    "zero limit": ("max_concurrent_runs = 0\n", ["max_concurrent_runs", ">= 1"]),
    "negative grace": ("cancel_grace_seconds = -1\n", ["cancel_grace_seconds", ">= 0"]),
    "nan grace": ("cancel_grace_seconds = nan\n", ["cancel_grace_seconds", "finite"]),
    "negative timeout": (TEMPLATE + "timeout_seconds = -5\n", ["templates.t.timeout_seconds"]),
    "zero timeout": (
        TEMPLATE + "timeout_seconds = 0\n",
        ["templates.t.timeout_seconds", "positive"],
    ),
    "infinite timeout": (TEMPLATE + "timeout_seconds = inf\n", ["timeout_seconds", "finite"]),
    "bad on_stop": ('on_stop = "kill"\n', ["on_stop", "'detach'", "'cancel'", "kill"]),
    "bad config_format": (
        TEMPLATE + 'config_format = "yaml"\n',
        ["templates.t.config_format", "'json'", "'ini'", "yaml"],
    ),
    "unknown placeholder": (
        '[templates.t]\ncommand = ["sim", "{rundir}/x"]\n',
        ["templates.t.command", "{rundir}", "{run_dir}"],
    ),
    "attribute placeholder": (
        '[templates.t]\ncommand = ["{python.__class__}"]\n',
        ["templates.t.command", "placeholders"],
    ),
    "broken placeholder": ('[templates.t]\ncommand = ["{python"]\n', ["templates.t.command"]),
    "env not strings": (TEMPLATE + "env = { N = 4 }\n", ["templates.t.env", "string"]),
    "invalid TOML": ("max_concurrent_runs = \n", ["not valid TOML", "line 1"]),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=str)
def test_bad_file_names_file_key_and_expectation(tmp_path: Path, case: str) -> None:
    text, fragments = BAD_FILES[case]
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"HOME": "/h"})
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if case != "invalid TOML":
        assert "expected" in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file") as info:
        load_settings(path, environ={"HOME": "/h"})
    assert str(path) in str(info.value)


def test_missing_file_from_variable(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(environ={"HOME": "/h", "RUNSUP_CONFIG": str(path)})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        load_settings(tmp_path, environ={"HOME": "/h"})


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'on_stop = "d\xe9tach"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"HOME": "/h"})
    assert str(path) in str(info.value)


# -- the same errors through the installed command ------------------------------


@pytest.mark.parametrize(
    "text",
    ["max_concurrent_runs = \n", 'colour = "red"\n', "[templates.t]\ncommand = []\n"],
    ids=["invalid-toml", "unknown-key", "empty-command"],
)
@pytest.mark.parametrize("where", ["before", "after"])
def test_command_with_bad_config_prints_one_line(
    runsup: Runsup, tmp_path: Path, text: str, where: str
) -> None:
    path = write(tmp_path / "bad.toml", text)
    args = ["--config", str(path), "list"] if where == "before" else ["list", "--config", str(path)]
    result = runsup(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert result.stdout == ""
    assert not runsup.db_path.exists()


def test_command_with_missing_config(runsup: Runsup, tmp_path: Path) -> None:
    result = runsup("--config", str(tmp_path / "missing.toml"), "list")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing.toml" in result.stderr


def test_command_with_bad_max_concurrent_variable(runsup: Runsup) -> None:
    result = runsup("list", env={"RUNSUP_MAX_CONCURRENT": "x"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "RUNSUP_MAX_CONCURRENT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_python_dash_m_reports_config_errors_the_same(runsup: Runsup, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", 'on_stop = "kill"\n')
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "--config", str(path), "list"],
        env=runsup.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "on_stop" in result.stderr
