"""`runsup check` (SPEC 7): the configuration, and a template's patterns tried on a saved log
that the test simulation really wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sims.fusionsim import ERROR_PATTERN, ITERATION_PATTERN, START_PATTERN

if TYPE_CHECKING:
    from conftest import Runsup

SIM = Path(__file__).resolve().parents[1] / "sims" / "fusionsim.py"
SIM_TIMEOUT_SECONDS = 60
START, ITERATION = START_PATTERN, ITERATION_PATTERN


def config(tmp_path: Path, *patterns: str) -> Path:
    """A configuration with a template `fusion` that has these progress patterns."""
    listed = ", ".join(f"'{p}'" for p in patterns)
    path = tmp_path / "runsup.toml"
    path.write_text(
        f'runs_dir = "{tmp_path / "runs"}"\n'
        f'database = "{tmp_path / "runs.db"}"\n'
        "[templates.fusion]\n"
        f'command = ["{sys.executable}", "{{config_path}}"]\n'
        'config_format = "ini"\n'
        f"progress_patterns = [{listed}]\n"
    )
    return path


def sample_log(tmp_path: Path, *args: str) -> Path:
    """A log written by the test simulation, stdout and stderr into one file."""
    log = tmp_path / "sim.log"
    with log.open("ab") as fh:
        subprocess.run(
            [sys.executable, str(SIM), *args],
            stdout=fh,
            stderr=fh,
            timeout=SIM_TIMEOUT_SECONDS,
            check=False,
        )
    return log


def test_plain_check_says_ok_and_lists_templates(runsup: Runsup, tmp_path: Path) -> None:
    conf = config(tmp_path, START, ITERATION)
    result = runsup("check", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK\n")
    assert f"fusion: {sys.executable} {{config_path}} (ini, 2 progress patterns)" in result.stdout
    assert "erlang-demo:" in result.stdout
    as_json = json.loads(runsup("check", "--json", "--config", str(conf)).stdout)
    assert as_json["templates"]["fusion"]["progress_patterns"] == [START, ITERATION]


def test_a_pattern_re2_refuses_is_one_clear_line(runsup: Runsup, tmp_path: Path) -> None:
    bad = r"(?P<iteration>[0-9]+) (?=done)"
    conf = config(tmp_path, START, bad)
    result = runsup("check", "--config", str(conf))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"runsup: error: config file {conf}: ")
    assert "templates.fusion.progress_patterns: " in lines[0]
    assert repr(bad) in lines[0]
    assert "refused by RE2" in lines[0]
    assert "invalid perl operator: (?=" in lines[0]  # RE2's own reason


def test_sample_log_gives_each_lines_progress_and_the_final_one(
    runsup: Runsup, tmp_path: Path
) -> None:
    conf = config(tmp_path, START, ITERATION, ERROR_PATTERN)
    log = sample_log(
        tmp_path, "--loads", "300.0", "350.0", "--iterations", "3", "--long-line", "1000000",
        "--binary", "5000", "--error", "out of memory",
    )  # fmt: skip
    result = runsup(
        "check", "--config", str(conf), "--template", "fusion", "--sample-log", str(log)
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "erlang_start: erlang=300.0 erlang_index=0 total_erlangs=2" in out
    assert "iteration=3 total_iterations=3" in out
    assert "9 lines gave progress" in out  # 2 starts, 6 iterations, 1 error
    assert "1 skipped (longer than 64 KiB)" in out  # the 1 MB line, though it looks like one
    assert out.rstrip().endswith(
        "final progress: load 2/2 (350.0 Erlang), iteration 3/3, last error: out of memory"
    )
    report = json.loads(
        runsup(
            "check", "--json", "--config", str(conf), "--template", "fusion",
            "--sample-log", str(log),
        ).stdout
    )  # fmt: skip
    assert report["final"] == {
        "current_erlang": 350.0,
        "erlang_index": 1,
        "total_erlangs": 2,
        "current_iteration": 3,
        "total_iterations": 3,
        "last_error": "out of memory",
    }
    assert [m["line"] for m in report["matches"]][:2] == [
        3,
        4,
    ]  # after the long line and the binary one
    assert report["long_lines"] == 1


def test_sample_log_errors(runsup: Runsup, tmp_path: Path) -> None:
    conf = config(tmp_path, START)
    log = tmp_path / "x.log"
    log.write_text("nothing\n")
    unknown = runsup("check", "--config", str(conf), "--template", "nope", "--sample-log", str(log))
    assert unknown.returncode == 1
    assert "unknown template 'nope' (known: erlang-demo, fusion)" in unknown.stderr
    missing = runsup(
        "check", "--config", str(conf), "--template", "fusion", "--sample-log",
        str(tmp_path / "missing.log"),
    )  # fmt: skip
    assert missing.returncode == 1
    assert "cannot read it: No such file or directory" in missing.stderr
    alone = runsup("check", "--config", str(conf), "--template", "fusion")
    assert alone.returncode == 2
    assert "give --template and --sample-log together" in alone.stderr
    no_patterns = runsup(
        "check", "--config", str(conf), "--template", "erlang-demo", "--sample-log", str(log)
    )
    assert no_patterns.returncode == 1
    assert "has no progress_patterns" in no_patterns.stderr
    assert os.path.getsize(log) == len("nothing\n")
