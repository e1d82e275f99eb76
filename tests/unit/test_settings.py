"""Configuration: defaults, a full file, RUNSUP_* overrides, and errors people can act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from supervisor.errors import ConfigError
from supervisor.settings import (
    BUILTIN_TEMPLATES,
    DEFAULT_EXECUTOR_COMMAND_TIMEOUT_SECONDS,
    ExecutorSettings,
    HooksSettings,
    ListenAddress,
    ResourcesSettings,
    Template,
    is_retry_outcome,
    load_settings,
    parse_listen,
    parse_size,
)

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
    assert fusion.config_format == "ini"
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


# -- SPEC sections 9 to 14: executors, resources, queue, hooks, metrics ------------

SECTIONS_FILE = """
runs_dir = "runs"

[templates.fusion]
command = ["/opt/fusion/bin/sim", "{config_path}"]
executor = "cluster"
cpus = 4
gpus = 2
memory_max = "8G"
max_concurrent = 3
max_attempts = 3
retry_on = ["signal", "timeout", "out_of_memory", "exit:3", "exit:any", "signal"]
retry_delay_seconds = 2.5
on_finish = ["/usr/local/bin/notify", "{run_id}", "{status}", "{run_dir}"]

[templates.local-sim]
command = ["sim"]
executor = "local"
gpus = 0
memory_max = 1048576

[resources]
cpus = 32
gpus = ["0", "1", "GPU-8f3a"]
memory = "120G"
pin_cpus = true

[executors.cluster]
kind = "slurm"
runs_dir = "/shared/runsup/runs"
partition = "compute"
account = "proj42"
sbatch_args = ["--qos=normal", "--exclusive"]
max_submitted = 50
poll_interval_seconds = 2.5
command_timeout_seconds = 60

[executors.small]
kind = "slurm"

[hooks]
on_finish = ["/usr/local/bin/notify-run", "{run_id}", "{status}"]
timeout_seconds = 5

[metrics]
listen = "127.0.0.1:9787"
"""


def test_sections_9_to_14_full_file(tmp_path: Path) -> None:
    path = write(tmp_path / "conf.toml", SECTIONS_FILE)
    settings = load_settings(path, environ={"HOME": "/home/u"})

    fusion = settings.templates["fusion"]
    assert (fusion.executor, fusion.cpus, fusion.gpus) == ("cluster", 4, 2)
    assert fusion.memory_max == 8 * 1024**3
    assert (fusion.max_concurrent, fusion.max_attempts, fusion.retry_delay_seconds) == (3, 3, 2.5)
    assert fusion.retry_on == ("signal", "timeout", "out_of_memory", "exit:3", "exit:any")
    assert fusion.on_finish == ("/usr/local/bin/notify", "{run_id}", "{status}", "{run_dir}")
    local = settings.templates["local-sim"]
    assert (local.executor, local.gpus, local.memory_max) == ("local", 0, 1048576)

    assert settings.resources == ResourcesSettings(
        cpus=32, gpus=("0", "1", "GPU-8f3a"), memory=120 * 1024**3, pin_cpus=True
    )
    assert settings.resources.cpu_capacity() == 32
    assert settings.resources.memory_capacity() == 120 * 1024**3

    assert set(settings.executors) == {"cluster", "small"}
    assert settings.executors["cluster"] == ExecutorSettings(
        name="cluster",
        kind="slurm",
        runs_dir=Path("/shared/runsup/runs"),
        partition="compute",
        account="proj42",
        sbatch_args=("--qos=normal", "--exclusive"),
        max_submitted=50,
        poll_interval_seconds=2.5,
        command_timeout_seconds=60,
    )
    small = settings.executors["small"]
    assert small.runs_dir == settings.runs_dir == tmp_path.resolve() / "runs"
    assert (small.partition, small.account, small.sbatch_args) == (None, None, ())
    assert (small.max_submitted, small.poll_interval_seconds) == (100, 10)
    assert small.command_timeout_seconds == DEFAULT_EXECUTOR_COMMAND_TIMEOUT_SECONDS

    assert settings.hooks == HooksSettings(
        on_finish=("/usr/local/bin/notify-run", "{run_id}", "{status}"), timeout_seconds=5
    )
    assert settings.metrics.listen == ListenAddress(host="127.0.0.1", port=9787)
    # A template's own hook replaces the global one; without one, the global one applies.
    assert settings.on_finish_for(fusion) == fusion.on_finish
    assert settings.on_finish_for(local) == settings.hooks.on_finish


def test_sections_9_to_14_defaults() -> None:
    settings = load_settings(environ={"HOME": "/home/u"})
    demo = settings.templates["erlang-demo"]
    assert (demo.executor, demo.cpus, demo.gpus, demo.memory_max) == ("local", 1, None, None)
    assert (demo.max_concurrent, demo.max_attempts, demo.retry_delay_seconds) == (None, 1, 10)
    assert demo.retry_on == ("signal", "lost", "node_failure", "preempted")
    assert demo.on_finish is None
    assert settings.resources == ResourcesSettings(cpus=None, gpus="auto", memory=None)
    assert not settings.resources.pin_cpus
    assert settings.resources.cpu_capacity() == len(os.sched_getaffinity(0))
    assert settings.resources.memory_capacity() == os.sysconf("SC_PAGE_SIZE") * os.sysconf(
        "SC_PHYS_PAGES"
    )
    assert settings.executors == {}
    assert settings.hooks == HooksSettings(on_finish=None, timeout_seconds=30)
    assert settings.on_finish_for(demo) is None
    assert settings.metrics.listen is None


def test_executor_runs_dir_defaults_to_the_effective_runs_dir(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[executors.c]\nkind = "slurm"\n')
    settings = load_settings(path, environ={"HOME": "/h", "RUNSUP_RUNS_DIR": "/env/runs"})
    assert settings.runs_dir == Path("/env/runs")
    assert settings.executors["c"].runs_dir == Path("/env/runs")


def test_executor_own_relative_runs_dir_is_beside_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[executors.c]\nkind = "slurm"\nruns_dir = "shared"\n')
    settings = load_settings(path, environ={"HOME": "/h", "RUNSUP_RUNS_DIR": "/env/runs"})
    assert settings.executors["c"].runs_dir == tmp_path.resolve() / "shared"


def test_gpus_auto_spelled_out(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[resources]\ngpus = "auto"\n')
    assert load_settings(path, environ={"HOME": "/h"}).resources.gpus == "auto"


def test_empty_gpu_list_means_no_gpus(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[resources]\ngpus = []\n")
    assert load_settings(path, environ={"HOME": "/h"}).resources.gpus == ()


def test_retry_on_may_be_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", TEMPLATE + "retry_on = []\n")
    assert load_settings(path, environ={"HOME": "/h"}).templates["t"].retry_on == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4096, 4096),
        ("4096", 4096),
        ("1K", 1024),
        ("8G", 8 * 1024**3),
        ("512m", 512 * 1024**2),
        ("1.5K", 1536),
        ("0.5G", 512 * 1024**2),
        (" 2 T ", 2 * 1024**4),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", [0, -1, "0", "0K", "1.5", "8X", "8GB", "", "G", "-1G", "1e3", True, 1.5, None, [1]]
)
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError, match=r"size|byte"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:9787", "127.0.0.1", 9787),
        ("0.0.0.0:1", "0.0.0.0", 1),
        ("[::1]:9787", "::1", 9787),
        ("[::]:65535", "::", 65535),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("localhost:9787", "localhost", 9787),
        ("metrics-1.example.org:443", "metrics-1.example.org", 443),
    ],
)
def test_parse_listen(value: str, host: str, port: int) -> None:
    assert parse_listen(value) == ListenAddress(host=host, port=port)


@pytest.mark.parametrize(
    "value",
    [
        "9787",
        ":9787",
        "localhost",
        "localhost:",
        "::1:9787",
        "[::1]9787",
        "[::1:9787",
        "[localhost]:80",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "127.0.0.1:+80",
        "127.0.0.1: 80",
        "127.0.0.1:٣",
        "256.1.1.1:80",
        "1.2.3:80",
        "host_name:80",
        "-bad:80",
        "a..b:80",
        "http://localhost:80",
    ],
)
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_listen(value)
    assert str(info.value)


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("signal", True),
        ("lost", True),
        ("node_failure", True),
        ("timeout", True),
        ("out_of_memory", True),
        ("exit:any", True),
        ("exit:1", True),
        ("exit:255", True),
        ("exit:0", False),
        ("exit:256", False),
        ("exit:-1", False),
        ("exit:", False),
        ("exit:x", False),
        ("exit:²", False),
        ("cancelled", False),
        ("Signal", False),
        (3, False),
    ],
)
def test_retry_outcomes(value: object, allowed: bool) -> None:
    assert is_retry_outcome(value) is allowed


CLUSTER = '[executors.cluster]\nkind = "slurm"\n'
SECTIONS_BAD_FILES = {
    # templates
    "template cpus zero": (TEMPLATE + "cpus = 0\n", ["templates.t.cpus", ">= 1", "0"]),
    "template cpus text": (TEMPLATE + 'cpus = "4"\n', ["templates.t.cpus", "whole"]),
    "template gpus negative": (TEMPLATE + "gpus = -1\n", ["templates.t.gpus", ">= 0"]),
    "template memory_max bad unit": (
        TEMPLATE + 'memory_max = "8Q"\n',
        ["templates.t.memory_max", "K, M, G or T", "8Q"],
    ),
    "template memory_max zero": (TEMPLATE + "memory_max = 0\n", ["templates.t.memory_max"]),
    "template max_concurrent zero": (
        TEMPLATE + "max_concurrent = 0\n",
        ["templates.t.max_concurrent", ">= 1"],
    ),
    "template max_attempts zero": (
        TEMPLATE + "max_attempts = 0\n",
        ["templates.t.max_attempts", ">= 1"],
    ),
    "template retry_on a string": (
        TEMPLATE + 'retry_on = "signal"\n',
        ["templates.t.retry_on", "exit:N"],
    ),
    "template retry_on unknown": (
        TEMPLATE + 'retry_on = ["signal", "crash"]\n',
        ["templates.t.retry_on", "'crash' is not one"],
    ),
    "template retry_on exit 0": (
        TEMPLATE + 'retry_on = ["exit:0"]\n',
        ["templates.t.retry_on", "'exit:0'"],
    ),
    "template retry_on exit 256": (
        TEMPLATE + 'retry_on = ["exit:256"]\n',
        ["templates.t.retry_on", "'exit:256'"],
    ),
    "template retry delay negative": (
        TEMPLATE + "retry_delay_seconds = -1\n",
        ["templates.t.retry_delay_seconds", ">= 0"],
    ),
    "template on_finish a string": (
        TEMPLATE + 'on_finish = "notify {run_id}"\n',
        ["templates.t.on_finish", "list"],
    ),
    "template on_finish empty": (TEMPLATE + "on_finish = []\n", ["templates.t.on_finish"]),
    "template on_finish bad placeholder": (
        TEMPLATE + 'on_finish = ["notify", "{state}"]\n',
        ["templates.t.on_finish", "{state}", "{status}"],
    ),
    "status placeholder in command": (
        '[templates.t]\ncommand = ["sim", "{status}"]\n',
        ["templates.t.command", "{status}"],
    ),
    "template unknown executor": (
        TEMPLATE + 'executor = "cluster"\n',
        ["templates.t.executor", "[executors.NAME]", "cluster"],
    ),
    "template executor not defined among others": (
        CLUSTER + TEMPLATE + 'executor = "clutser"\n',
        ["templates.t.executor", "'cluster'", "clutser"],
    ),
    # [resources]
    "resources not a table": ("resources = 4\n", ["resources", "table"]),
    "resources unknown key": ("[resources]\ncores = 4\n", ["resources.cores", "unknown key"]),
    "resources cpus zero": ("[resources]\ncpus = 0\n", ["resources.cpus", ">= 1"]),
    "resources gpus all": ('[resources]\ngpus = "all"\n', ["resources.gpus", "'auto'", "all"]),
    "resources gpus numbers": ("[resources]\ngpus = [0, 1]\n", ["resources.gpus", "GPU id"]),
    "resources gpus comma": ('[resources]\ngpus = ["0,1"]\n', ["resources.gpus", "'0,1'"]),
    "resources gpus twice": ('[resources]\ngpus = ["0", "0"]\n', ["resources.gpus", "twice"]),
    "resources memory": ('[resources]\nmemory = "lots"\n', ["resources.memory", "'lots'"]),
    "resources pin_cpus": ('[resources]\npin_cpus = "yes"\n', ["resources.pin_cpus", "true"]),
    # [executors.NAME]
    "executors not a table": ("executors = 1\n", ["executors", "table"]),
    "executor not a table": ('[executors]\ncluster = "slurm"\n', ["executors.cluster", "table"]),
    "executor named local": ('[executors.local]\nkind = "slurm"\n', ["executors.local", "'local'"]),
    "executor without kind": ("[executors.c]\npartition = 'p'\n", ["executors.c.kind", "'slurm'"]),
    "executor other kind": ('[executors.c]\nkind = "pbs"\n', ["executors.c.kind", "pbs"]),
    "executor unknown key": (
        CLUSTER + 'queue = "x"\n',
        ["executors.cluster.queue", "unknown key"],
    ),
    "executor partition empty": (CLUSTER + 'partition = ""\n', ["executors.cluster.partition"]),
    "executor account number": (CLUSTER + "account = 42\n", ["executors.cluster.account"]),
    "executor sbatch_args string": (
        CLUSTER + 'sbatch_args = "--qos=normal"\n',
        ["executors.cluster.sbatch_args", "list"],
    ),
    "executor sbatch_args number": (
        CLUSTER + "sbatch_args = [1]\n",
        ["executors.cluster.sbatch_args", "list"],
    ),
    "executor max_submitted zero": (
        CLUSTER + "max_submitted = 0\n",
        ["executors.cluster.max_submitted", ">= 1"],
    ),
    "executor poll interval zero": (
        CLUSTER + "poll_interval_seconds = 0\n",
        ["executors.cluster.poll_interval_seconds", "positive"],
    ),
    "executor command timeout zero": (
        CLUSTER + "command_timeout_seconds = 0\n",
        ["executors.cluster.command_timeout_seconds", "positive"],
    ),
    "executor name too long": (
        f'[executors.{"x" * 101}]\nkind = "slurm"\n',
        ["executors.xxx", "1 to 100 characters"],
    ),
    # [hooks]
    "hooks unknown key": ("[hooks]\non_start = ['x']\n", ["hooks.on_start", "unknown key"]),
    "hooks on_finish string": ('[hooks]\non_finish = "notify"\n', ["hooks.on_finish", "list"]),
    "hooks on_finish placeholder": (
        '[hooks]\non_finish = ["n", "{exit_code}"]\n',
        ["hooks.on_finish", "{exit_code}"],
    ),
    "hooks timeout zero": ("[hooks]\ntimeout_seconds = 0\n", ["hooks.timeout_seconds"]),
    # [metrics]
    "metrics unknown key": ("[metrics]\nport = 9787\n", ["metrics.port", "unknown key"]),
    "metrics listen number": ("[metrics]\nlisten = 9787\n", ["metrics.listen", "string"]),
    "metrics listen no port": (
        '[metrics]\nlisten = "127.0.0.1"\n',
        ["metrics.listen", "HOST:PORT", "127.0.0.1"],
    ),
    "metrics listen bad port": (
        '[metrics]\nlisten = "127.0.0.1:70000"\n',
        ["metrics.listen", "'70000'", "1 to 65535"],
    ),
    "metrics listen bare ipv6": (
        '[metrics]\nlisten = "::1:9787"\n',
        ["metrics.listen", "brackets"],
    ),
    # database (SPEC section 2: a path or an sqlite:/// URL)
    "database postgresql": (
        'database = "postgresql://u@db/runs"\n',
        ["database", "sqlite:///", "postgresql://"],
    ),
    "database driver form": (
        'database = "sqlite+pysqlite:////x/runs.db"\n',
        ["database", "sqlite+pysqlite://", "not supported"],
    ),
    "database in memory": ('database = "sqlite://"\n', ["database", "in-memory"]),
    "database named memory": ('database = "sqlite:///:memory:"\n', ["database", "in-memory"]),
    "database url options": (
        'database = "sqlite:////x/runs.db?mode=ro"\n',
        ["database", "options"],
    ),
}


def check_bad_file(tmp_path: Path, text: str, fragments: list[str]) -> None:
    """Loading `text` fails with one line naming the file, each fragment and the expectation."""
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"HOME": "/h"})
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "expected" in message
    assert "\n" not in message


@pytest.mark.parametrize("case", SECTIONS_BAD_FILES, ids=str)
def test_sections_bad_file(tmp_path: Path, case: str) -> None:
    text, fragments = SECTIONS_BAD_FILES[case]
    check_bad_file(tmp_path, text, fragments)


def test_database_url_relative_path_is_beside_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'database = "sqlite:///state/runs.db"\n')
    settings = load_settings(path, environ={"HOME": "/h"})
    assert settings.database_path == tmp_path.resolve() / "state" / "runs.db"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("postgresql://u@db/runs", "postgresql://"),
        ("mysql+pymysql://u@db/runs", "mysql+pymysql://"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:////x/runs.db?uri=true", "options"),
    ],
)
def test_bad_database_variable(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HOME": "/h", "RUNSUP_DATABASE": value})
    message = str(info.value)
    assert message.startswith("RUNSUP_DATABASE: expected a file path or an sqlite:/// URL")
    assert repr(value) in message
    assert why in message
    assert "\n" not in message


def test_bad_database_variable_wins_over_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'database = "runs.db"\n')
    with pytest.raises(ConfigError, match="RUNSUP_DATABASE"):
        load_settings(path, environ={"HOME": "/h", "RUNSUP_DATABASE": "postgresql://x/y"})


@pytest.mark.parametrize("where", ["file", "variable"])
def test_command_with_postgresql_database_prints_one_line(
    runsup: Runsup, tmp_path: Path, where: str
) -> None:
    url = "postgresql://u@db/runs"
    if where == "file":
        path = write(tmp_path / "pg.toml", f'database = "{url}"\n')
        result = runsup("--config", str(path), "list")
    else:
        result = runsup("list", env={"RUNSUP_DATABASE": url})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database" in lines[0].lower() and "sqlite:///" in lines[0] and url in lines[0]


def _template(tmp_path: Path, keys: str) -> Template:
    path = write(tmp_path / "c.toml", TEMPLATE + keys)
    return load_settings(path, environ={"HOME": "/h"}).templates["t"]


def test_checkpoint_settings_and_their_defaults(tmp_path: Path) -> None:
    plain = _template(tmp_path, "")
    assert (plain.resume, plain.checkpoint_signal, plain.checkpoint_seconds) == (False, None, None)
    assert plain.checkpoint_exit_code is None
    t = _template(
        tmp_path,
        'resume = true\ncheckpoint_signal = "SIGusr2"\ncheckpoint_exit_code = 85\n'
        "timeout_seconds = 3600\n",
    )
    assert (t.resume, t.checkpoint_signal, t.checkpoint_exit_code) == (True, "USR2", 85)
    assert t.checkpoint_seconds == 60.0  # Slurm's own default for --signal without @time
    t = _template(tmp_path, 'checkpoint_signal = "USR1"\ncheckpoint_seconds = 120\n')
    assert (t.checkpoint_signal, t.checkpoint_seconds) == ("USR1", 120.0)


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ('checkpoint_signal = "TERM"\n', "checkpoint_signal: expected one of"),
        ('checkpoint_signal = "KILL"\n', "checkpoint_signal: expected one of"),
        ("checkpoint_signal = 10\n", "checkpoint_signal: expected one of"),
        ("checkpoint_seconds = 30\n", "no value without a checkpoint_signal"),
        ('checkpoint_signal = "USR1"\ncheckpoint_seconds = 0\n', "positive"),
        ('checkpoint_signal = "USR1"\ncheckpoint_seconds = 70000\n', "at most 65535"),
        (
            'checkpoint_signal = "USR1"\ncheckpoint_seconds = 600\ntimeout_seconds = 600\n',
            "less than timeout_seconds",
        ),
        ("checkpoint_exit_code = 0\n", "checkpoint_exit_code"),
        ("checkpoint_exit_code = 143\n", "reads as a signal"),
        ('resume = "yes"\n', "resume: expected true or false"),
    ],
)
def test_checkpoint_settings_refused(tmp_path: Path, keys: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _template(tmp_path, keys)


def test_preempted_is_a_retry_outcome() -> None:
    assert is_retry_outcome("preempted")
