"""Hostile input against the installed daemon: rows other programs write, files simulations
write, and what lies in the runs directory (issue 6, security model).

The model: only templates from the daemon's own configuration run; `config_json` is data,
written to the run's config file and never to a shell or an argument list; a row that cannot
be run ends FAILED with words, and nothing is created outside `runs_dir`; a run directory
that is not a plain directory of ours is refused, never followed; the progress file is read
only if it is a regular file, in bounded lines and bounded passes; each run's log is
bounded (head and tail kept).
"""

from __future__ import annotations

import configparser
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import RUNSUP, DaemonHarness, wait_for

from supervisor.db import utcnow

SQL_TIME = "%Y-%m-%d %H:%M:%S.%f"
RSS_SAMPLE_SECONDS = 0.05


def insert_rows(db_path: Path, rows: list[tuple[str, str, str]]) -> None:
    """Insert PENDING rows (id, config_json, template) as a foreign program would."""
    now = utcnow().strftime(SQL_TIME)
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO runs (id, status, config_json, template, created_at)"
                " VALUES (?, 'PENDING', ?, ?, ?)",
                [(run_id, config, template, now) for run_id, config, template in rows],
            )
    finally:
        conn.close()


def tree(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple[int, int]]:
    """Every path under root (symlinks not followed) -> (mode, size); names in skip left out."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.split("/")[0] in skip:
                continue
            st = path.lstat()
            out[rel] = (st.st_mode, st.st_size if stat.S_ISREG(st.st_mode) else 0)
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_kib(self.pid))
            except (OSError, AssertionError):
                return
            time.sleep(RSS_SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def script_template(tmp: Path, name: str, body: str, *args: str, extra: str = "") -> str:
    """A template running a sh script written to tmp (the script gets `args`)."""
    script = tmp / f"{name}.sh"
    script.write_text(body)
    argv = json.dumps(["/bin/sh", str(script), *args])
    return f"[templates.{name}]\ncommand = {argv}\n{extra}"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A daemon harness, not started (tests add templates first); torn down at the end."""
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


# -- config_json is data -----------------------------------------------------------------


def test_config_values_never_reach_a_shell_or_argv(harness: DaemonHarness) -> None:
    tmp = harness.tmp
    pwned = tmp / "pwned"
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep me")
    # The simulation is a shell script: it records its argv and nothing else.
    recorder = json.dumps(
        ["/bin/sh", "-c", 'printf "%s\\n" "$@" > argv.txt', "sim", "{config_path}", "{run_id}"]
    )
    harness.write_config(
        f"[templates.rec-json]\ncommand = {recorder}\n"
        f'[templates.rec-ini]\ncommand = {recorder}\nconfig_format = "ini"\n'
    )
    harness.start()
    hostile = {
        "subst": f"$(touch {pwned}-1)",
        "backtick": f"`touch {pwned}-2`",
        "semicolon": f"; touch {pwned}-3; rm -rf {victim} #",
        "quotes": 'it\'s "quoted" \\ and $HOME',
        "placeholders": "{run_id} {config_path} {python} {0}",
        "newline": "line1\nline2 $(touch " + str(pwned) + "-4)",
        "section": {"cmd": f"$(touch {pwned}-5)", "pipe": f"| touch {pwned}-6", "n": 3},
    }
    config_json = json.dumps(hostile)
    runs = {
        "json": harness.store.submit("rec-json", config_json, name=f"$(touch {pwned}-7)").id,
        "ini": harness.store.submit("rec-ini", config_json, name="; rm -rf /").id,
    }
    for fmt, run_id in runs.items():
        rec = harness.wait_final(run_id)
        assert rec.status == "COMPLETED", rec.error_message
        run_dir = harness.runs_dir / run_id
        config_file = run_dir / f"config.{fmt}"
        # The argument list is the template's, placeholders filled from daemon values only.
        assert (run_dir / "argv.txt").read_text().splitlines() == [str(config_file), run_id]
        text = config_file.read_text()
        if fmt == "json":
            assert json.loads(text) == hostile
        else:
            parser = configparser.RawConfigParser()
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read_string(text)
            general = dict(parser["general_settings"])
            assert general == {k: v for k, v in hostile.items() if isinstance(v, str)}
            assert dict(parser["section"]) == {
                "cmd": hostile["section"]["cmd"],  # type: ignore[index]
                "pipe": hostile["section"]["pipe"],  # type: ignore[index]
                "n": "3",
            }
    assert sorted(tmp.glob("pwned*")) == [], "a config value was run by a shell"
    assert (victim / "keep").read_text() == "keep me"


# -- rows that cannot be run -------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
BAD_ROWS = [
    # (id, config_json, template, words expected in error_message)
    ("", "{}", "testsim", "invalid run id"),
    ("ABCDEFABCDEF", "{}", "testsim", "invalid run id"),
    ("abc", "{}", "testsim", "invalid run id"),
    ("abcdefabcdef0", "{}", "testsim", "invalid run id"),
    ("../../../tmp", "{}", "testsim", "invalid run id"),
    ("/etc/passwd0", "{}", "testsim", "invalid run id"),
    ("..", "{}", "testsim", "invalid run id"),
    ("abcdefabcde\n", "{}", "testsim", "invalid run id"),
    ("abcd/fabcdef", "{}", "testsim", "invalid run id"),
    ("\uff41bcdefabcdef", "{}", "testsim", "invalid run id"),
    ("bad000000001", "{}", "no-such-template", "unknown template"),
    ("bad000000002", "{}", "../testsim", "unknown template"),
    ("bad000000003", "{}", "testsim ", "unknown template"),
    ("bad000000004", "{}", "", "unknown template"),
    ("bad000000005", "null", "testsim", "JSON object"),
    ("bad000000006", '"text"', "testsim", "JSON object"),
    ("bad000000007", "42", "testsim", "JSON object"),
    ("bad000000008", "", "testsim", "not valid JSON"),
    ("bad000000009", "{", "testsim", "not valid JSON"),
    ("bad00000000a", '{"a": 1} trailing', "testsim", "not valid JSON"),
    ("bad00000000b", DEEP, "testsim", "not valid JSON"),
    ("bad00000000c", '{"a": ' + DEEP + "}", "testsim", "not valid JSON"),
]


def test_hostile_rows_fail_clearly_and_create_nothing(harness: DaemonHarness) -> None:
    harness.start()
    skip = frozenset({"runs.db", "runs.db-wal", "runs.db-shm", "daemon.log"})
    before = tree(harness.tmp, skip)
    insert_rows(harness.db_path, [(r[0], r[1], r[2]) for r in BAD_ROWS])
    # A good run queued behind them: bad rows must not block the queue.
    good = harness.submit({})
    for run_id, _, _, words in BAD_ROWS:
        rec = harness.wait_final(run_id)
        assert rec.status == "FAILED", run_id
        assert rec.error_message is not None and words in rec.error_message, rec.error_message
        assert len(rec.error_message) <= 4000
        assert rec.pid is None and rec.started_at is None
    assert harness.wait_final(good).status == "COMPLETED"
    after = tree(harness.tmp, skip)
    created = sorted(set(after) - set(before))
    assert all(p.startswith(f"runs/{good}") for p in created), created
    assert "loop_error" not in harness.log_text()


def test_submit_refuses_deeply_nested_config(tmp_path: Path, harness: DaemonHarness) -> None:
    config_file = tmp_path / "deep.json"
    config_file.write_text('{"a": ' + DEEP + "}")
    out = subprocess.run(
        [
            str(RUNSUP),
            "--config",
            str(harness.config),
            "submit",
            "--template",
            "testsim",
            "--config-file",
            str(config_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "JSON" in out.stderr
    assert harness.store.list_runs() == []


def test_config_that_cannot_be_written_fails_the_run(harness: DaemonHarness) -> None:
    harness.write_config('[templates.ini-true]\ncommand = ["/bin/true"]\nconfig_format = "ini"\n')
    harness.start()
    cases = {
        # A lone surrogate is valid JSON but cannot be written as UTF-8 text.
        "5a0000000001": ('{"k": "\\ud800"}', "ini-true"),
        # INI cannot carry a key with "=" in it.
        "5a0000000002": ('{"s": {"a=b": 1}}', "ini-true"),
    }
    insert_rows(harness.db_path, [(k, c, t) for k, (c, t) in cases.items()])
    good = harness.submit({})
    for run_id in cases:
        rec = harness.wait_final(run_id)
        assert rec.status == "FAILED"
        assert rec.error_message is not None and "could not start" in rec.error_message
    assert harness.wait_final(good).status == "COMPLETED"
    assert "loop_error" not in harness.log_text()


# -- what lies in the runs directory ---------------------------------------------------------


def _elsewhere(tmp: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A directory standing in for /etc, with a file in it, and its tree."""
    target = tmp / "elsewhere"
    target.mkdir()
    (target / "passwd").write_text("root:x:0:0\n")
    return target, tree(target)


def test_planted_symlink_run_dir_is_not_followed(harness: DaemonHarness) -> None:
    harness.start()
    target, before = _elsewhere(harness.tmp)
    run_id = "5e1f5e1f5e1f"
    (harness.runs_dir / run_id).symlink_to(target)
    insert_rows(harness.db_path, [(run_id, "{}", "testsim")])
    rec = harness.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.error_message is not None and "symbolic link" in rec.error_message
    assert tree(target) == before, "the daemon wrote through a planted symlink"
    assert harness.wait_final(harness.submit({})).status == "COMPLETED"


@pytest.mark.parametrize("plant", ["file", "logs-link", "log-file-link", "record-link"])
def test_planted_things_in_a_run_dir_are_refused(harness: DaemonHarness, plant: str) -> None:
    harness.start()
    target, before = _elsewhere(harness.tmp)
    run_id = "5e1f5e1f5e10"
    run_dir = harness.runs_dir / run_id
    if plant == "file":
        run_dir.write_text("not a directory")
    else:
        run_dir.mkdir()
        if plant == "logs-link":
            (run_dir / "logs").symlink_to(target)
        elif plant == "log-file-link":
            (run_dir / "logs").mkdir()
            (run_dir / "logs" / "sim.log").symlink_to(target / "passwd")
        else:
            (run_dir / ".runsup").symlink_to(target)
    insert_rows(harness.db_path, [(run_id, "{}", "testsim")])
    rec = harness.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.error_message is not None and "could not start" in rec.error_message
    assert tree(target) == before, "the daemon wrote through a planted path"
    assert harness.wait_final(harness.submit({})).status == "COMPLETED"


# -- the progress file ------------------------------------------------------------------------

GARBAGE_BAD_LINES = 2001  # the over-long line and the 2000 short ones PROGRESS_TRAP writes
PROGRESS_TRAP = """\
case "$1" in
  zero) ln -s /dev/zero progress.jsonl ;;
  random) ln -s /dev/urandom progress.jsonl ;;
  fifo) mkfifo progress.jsonl ;;
  garbage)
    # 100 MB without a newline (one over-long line), then many short bad lines.
    head -c 100000000 /dev/zero | tr '\\0' 'x' > progress.jsonl
    printf '\\n' >> progress.jsonl
    i=0; while [ $i -lt 2000 ]; do echo "not json $i"; i=$((i+1)); done >> progress.jsonl ;;
esac
echo ready > ready
while [ ! -e go ]; do sleep 0.02; done
if [ "$1" != garbage ]; then rm -f progress.jsonl; fi
printf '{"erlang": 5.0, "iteration": 7, "total_iterations": 9}\\n' >> progress.jsonl
while [ ! -e done ]; do sleep 0.02; done
"""


def wait_trap_met(h: DaemonHarness, run_id: str, mode: str) -> None:
    """Wait until the daemon has met the trap: refused the file, or read all its garbage."""
    if mode == "garbage":
        wait_for(
            "the garbage read to its end",
            lambda: h.run(run_id).progress_bad_lines == GARBAGE_BAD_LINES,
            60,
        )
        return
    path = str(h.runs_dir / run_id / "progress.jsonl")
    refused = h.wait_logged("progress_file_refused", 60, path=path)
    assert ("fifo" if mode == "fifo" else "symlink") in refused["reason"], refused


@pytest.mark.parametrize("mode", ["zero", "random", "fifo", "garbage"])
def test_hostile_progress_file_neither_hangs_nor_swells_the_daemon(
    harness: DaemonHarness, mode: str
) -> None:
    harness.write_config(script_template(harness.tmp, "trap", PROGRESS_TRAP, mode))
    harness.start()
    assert harness.proc is not None
    base = rss_kib(harness.proc.pid)
    with RssSampler(harness.proc.pid) as sampler:
        run_id = harness.submit({}, template="trap")
        run_dir = harness.runs_dir / run_id
        wait_for("the trap to be set", lambda: (run_dir / "ready").exists(), 60)
        wait_trap_met(harness, run_id, mode)
        # The daemon keeps serving after meeting the trap, which stays in place meanwhile.
        other = harness.submit({"progress": [{"iteration": 1}]})
        assert harness.wait_final(other).status == "COMPLETED"
        (run_dir / "go").write_text("")
        rec = wait_for(
            "progress from the real file",
            lambda: r if (r := harness.run(run_id)).current_iteration == 7 else None,
            60,
        )
        assert rec.current_erlang == 5.0 and rec.total_iterations == 9
        if mode == "garbage":
            assert rec.progress_bad_lines == GARBAGE_BAD_LINES
        (run_dir / "done").write_text("")
        assert harness.wait_final(run_id).status == "COMPLETED"
    grown = max(sampler.samples) - base
    print(f"daemon RSS {base} KiB at start, at most +{grown} KiB with a {mode} progress file")
    assert grown < 40 * 1024, f"the daemon swelled by {grown} KiB"
    assert "loop_error" not in harness.log_text()


# -- modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_run_dir_modes_group_reads_nobody_else_writes(harness: DaemonHarness, umask: int) -> None:
    old = os.umask(umask)
    try:
        harness.start()
    finally:
        os.umask(old)
    run_id = harness.submit({"stdout": "hello", "progress": [{"iteration": 1}]})
    assert harness.wait_final(run_id).status == "COMPLETED"
    run_dir = harness.runs_dir / run_id
    for path in [run_dir, *run_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o022 == 0, f"{path} is writable by group or others: {oct(mode)}"
        assert mode & 0o007 == 0, f"{path} is open to others: {oct(mode)}"
    # What the daemon itself creates, the service's group can read whatever the umask.
    for path in (run_dir, run_dir / "logs", run_dir / ".runsup"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
    for path in (run_dir / "config.json", run_dir / "logs" / "sim.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


# -- bounded log and error_message -------------------------------------------------------------

CHATTY = """\
import os, sys, time
out = sys.stdout.buffer
out.write(b"HEAD-MARKER first line\\n")
line = b"x" * 1023 + b"\\n"
written = 0
for i in range({lines}):
    out.write(line)
    written += len(line)
    if i % 256 == 255:
        out.flush()
        time.sleep(0.005)
out.write(b"TAIL-MARKER last line\\n")
out.flush()
with open("written.txt", "w") as fh:
    fh.write(str(written))
"""

LOG_CAP = 1024 * 1024


def test_log_is_bounded_keeping_head_and_tail(harness: DaemonHarness) -> None:
    lines = 24 * 1024  # 24 MiB of output, 24 times the cap
    code = CHATTY.format(lines=lines)
    harness.settings["max_log_bytes"] = LOG_CAP
    cmd = json.dumps([sys.executable, "-c", code])
    harness.write_config(f"[templates.chatty]\ncommand = {cmd}\n")
    harness.start()
    run_id = harness.submit({}, template="chatty")
    log_file = harness.runs_dir / run_id / "logs" / "sim.log"
    sizes: list[int] = []
    while harness.run(run_id).status in ("PENDING", "RUNNING"):
        if log_file.exists():
            sizes.append(log_file.stat().st_size)
        time.sleep(0.01)
    rec = harness.wait_final(run_id)
    assert rec.status == "COMPLETED", rec.error_message
    assert int((harness.runs_dir / run_id / "written.txt").read_text()) == lines * 1024
    data = log_file.read_bytes()
    print(f"log: {lines * 1024} bytes written, {len(data)} kept, at most {max(sizes)} seen")
    assert len(data) <= LOG_CAP
    assert data.startswith(b"HEAD-MARKER first line\n")
    assert data.endswith(b"x" * 1023 + b"\nTAIL-MARKER last line\n")
    assert b"runsup cut" in data
    assert max(sizes) <= 4 * LOG_CAP, "the log grew far past its cap while the run went on"


def test_error_message_is_bounded(harness: DaemonHarness) -> None:
    huge = "E" * 200_000
    run_id = harness.submit(
        {"exit_code": 2, "progress": [{"type": "error", "message": huge}], "stdout": huge}
    )
    harness.start()
    rec = harness.wait_final(run_id)
    assert rec.status == "FAILED"
    assert rec.error_message is not None
    assert len(rec.error_message) <= 4000
    assert rec.error_message.startswith("exited with code 2")
