"""The pure parts of the local executor: stat lines, sh exit statuses, program lookup."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import LaunchError
from supervisor.executors.base import UNKNOWN_EXIT, ExitStatus
from supervisor.executors.local.identity import parse_stat_line
from supervisor.executors.local.keeper import EXIT_FILE, decode_shell_status, read_exit_file
from supervisor.executors.local.spawn import resolve_program

# The 50 fields after comm of a real line (state, ppid, pgrp, session, ..., starttime is 20th).
REST = (
    "S 1 4242 4242 0 -1 4194560 120 0 0 0 0 0 0 0 20 0 1 0 987654 2654208 388 "
    "18446744073709551615 1 1 0 0 0 0 0 0 65538 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0"
)


def stat_line(pid: int, comm: str, start_ticks: int = 987654) -> str:
    """A /proc/<pid>/stat line with the given comm and start time."""
    rest = REST.replace(" 987654 ", f" {start_ticks} ")
    return f"{pid} ({comm}) {rest}\n"


def test_parse_plain_line() -> None:
    assert parse_stat_line(stat_line(4242, "sleep")) == (4242, 987654)


@pytest.mark.parametrize("comm", ["my sim", "a) b", "x (y) z", ") S 1 2 3", "((", "", "  "])
def test_parse_comm_with_spaces_and_parens(comm: str) -> None:
    assert parse_stat_line(stat_line(17, comm, 5)) == (17, 5)


@given(
    pid=st.integers(min_value=1, max_value=4_194_304),
    ticks=st.integers(min_value=0, max_value=2**63),
    comm=st.text(alphabet=st.characters(exclude_characters="\n\x00"), max_size=16),
)
def test_parse_any_comm(pid: int, ticks: int, comm: str) -> None:
    assert parse_stat_line(stat_line(pid, comm, ticks)) == (pid, ticks)


def test_parse_real_line_of_this_process() -> None:
    line = Path("/proc/self/stat").read_text()
    pid, ticks = parse_stat_line(line)
    assert pid > 0 and ticks > 0


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "12 (x) S 1 2",  # too few fields
        "(x) " + REST,  # no pid
        "-3 (x) " + REST,
        "0 (x) " + REST,
        "12 x " + REST,  # no parentheses
        "12 (x) " + REST.replace(" 987654 ", " soon "),
        "12 (x) SS" + REST[1:],  # state is one letter
        "१२ (x) " + REST,  # digits, but not ASCII ones
    ],
)
def test_parse_garbage_raises(line: str) -> None:
    with pytest.raises(ValueError):
        parse_stat_line(line)


@pytest.mark.parametrize(
    ("rc", "expected"),
    [
        (0, ExitStatus(0, None)),
        (5, ExitStatus(5, None)),
        (127, ExitStatus(127, None)),
        (128, ExitStatus(128, None)),  # 128+0: no signal 0
        (129, ExitStatus(None, signal.SIGHUP)),
        (130, ExitStatus(None, signal.SIGINT)),
        (137, ExitStatus(None, signal.SIGKILL)),
        (143, ExitStatus(None, signal.SIGTERM)),  # also what `exit 143` looks like
        (139, ExitStatus(None, signal.SIGSEGV)),
        (160, ExitStatus(160, None)),  # 32 and 33 are glibc's, not valid signals
        (161, ExitStatus(161, None)),
        (162, ExitStatus(None, 34)),  # SIGRTMIN
        (192, ExitStatus(None, 64)),  # SIGRTMAX
        (193, ExitStatus(193, None)),
        (255, ExitStatus(255, None)),
    ],
)
def test_decode_shell_status(rc: int, expected: ExitStatus) -> None:
    assert decode_shell_status(rc) == expected


def test_unknown_exit_is_not_known() -> None:
    assert not UNKNOWN_EXIT.known
    assert ExitStatus(0, None).known
    assert ExitStatus(None, 9).known


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"0\n", ExitStatus(0, None)),
        (b"143\n", ExitStatus(None, 15)),
        (b"14", None),  # a write caught half way: not trusted
        (b"", None),
        (b"256\n", None),
        (b"x\n", None),
        (b"5\n5\n", None),
    ],
)
def test_exit_file_only_complete_lines_count(
    tmp_path: Path, content: bytes, expected: ExitStatus | None
) -> None:
    (tmp_path / EXIT_FILE).write_bytes(content)
    assert read_exit_file(tmp_path) == expected


def test_exit_file_missing(tmp_path: Path) -> None:
    assert read_exit_file(tmp_path) is None


def _program(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_resolve_on_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _program(tmp_path / "a" / "sim", 0o644)  # found first but not executable: skipped
    wanted = _program(tmp_path / "b" / "sim")
    env = {"PATH": f"{tmp_path / 'a'}:{tmp_path / 'b'}"}
    assert resolve_program("sim", env, tmp_path) == str(wanted)


def test_resolve_not_found_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"command 'nope' not found on PATH=/x:/y"):
        resolve_program("nope", {"PATH": "/x:/y"}, tmp_path)


def test_resolve_without_path_variable(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=f"not found on the default PATH {os.defpath}"):
        resolve_program("surely-not-a-command-xyz", {}, tmp_path)


def test_resolve_only_non_executable_found(tmp_path: Path) -> None:
    _program(tmp_path / "sim", 0o644)
    with pytest.raises(LaunchError, match=r"cannot be run: .*sim is not executable"):
        resolve_program("sim", {"PATH": str(tmp_path)}, tmp_path)


def test_resolve_absolute_not_executable(tmp_path: Path) -> None:
    path = _program(tmp_path / "sim", 0o644)
    if os.access(path, os.X_OK):
        pytest.skip("running with privileges that can execute anything")
    with pytest.raises(LaunchError, match=rf"'{path}' is not executable \(mode -rw-r--r--\)"):
        resolve_program(str(path), {}, tmp_path)


def test_resolve_absolute_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="does not exist"):
        resolve_program(str(tmp_path / "missing"), {}, tmp_path)
    with pytest.raises(LaunchError, match="is a directory"):
        resolve_program(str(tmp_path), {}, tmp_path)


def test_resolve_relative_to_working_directory(tmp_path: Path) -> None:
    wanted = _program(tmp_path / "sim")
    assert resolve_program("./sim", {"PATH": "/nowhere"}, tmp_path) == str(tmp_path / "./sim")
    assert Path(resolve_program("./sim", {}, tmp_path)).samefile(wanted)
    # An empty PATH entry means the working directory.
    assert Path(resolve_program("sim", {"PATH": "/nowhere:"}, tmp_path)).samefile(wanted)


def test_resolve_empty_command(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="empty"):
        resolve_program("", {}, tmp_path)
