"""The suite's own checks (tests/leaks.py, tests/tiers.py), run on a small suite of their own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]

pytest_plugins = ("pytester",)

LEAKY_SUITE = """
import subprocess, sys

def test_leaves_a_sleeper(tmp_path):
    proc = subprocess.Popen(["sleep", "300"])
    (tmp_path.parent.parent / "sleeper.pid").write_text(str(proc.pid))

def test_ends_what_it_starts():
    proc = subprocess.Popen(["sleep", "300"])
    proc.terminate()
    proc.wait()
"""


SESSION_LEAK_SUITE = """
import subprocess
import pytest

@pytest.fixture(scope="session")
def sleeper():
    yield subprocess.Popen(["sleep", "300"])

def test_uses_a_session_process(sleeper):
    assert sleeper.poll() is None
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, suite: str = LEAKY_SUITE
) -> pytest.RunResult:
    pytester.makepyfile(test_inner=suite)
    # The inner suite's summary; monkeypatch gives this session's own back afterwards.
    monkeypatch.setenv("RUNSUP_TEST_SUMMARY", str(pytester.path / "summary.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), *sys.path]))
    return pytester.runpytest_subprocess("-p", "leaks", "-p", "tiers", "-p", "no:cacheprovider")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_test_whose_process_outlives_it_fails_and_the_process_is_ended(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*processes outlived the test*", "*(sleep 300)*"])
    pid = int(next(pytester.path.parent.rglob("sleeper.pid")).read_text())
    assert not _pid_alive(pid)
    summary = json.loads((pytester.path / "summary.json").read_text())
    outcomes = {t["nodeid"].split("::")[-1]: t["outcome"] for t in summary["tests"]}
    assert outcomes == {"test_leaves_a_sleeper": "failed", "test_ends_what_it_starts": "passed"}


def test_a_process_left_at_the_end_of_the_session_fails_the_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, SESSION_LEAK_SUITE)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*processes left behind by the suite*", "*(sleep 300)*"])
    summary = json.loads((pytester.path / "summary.json").read_text())
    assert len(summary["leftovers"]) == 1 and "sleep 300" in summary["leftovers"][0]
