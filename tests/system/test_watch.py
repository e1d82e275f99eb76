"""`runsup watch` and `runsup logs` against a real daemon and real simulations."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import RUNSUP, DaemonHarness, wait_for

COMMAND_TIMEOUT_SECONDS = 30
# A small paced erlang-demo run: 2 loads x 4 iterations, 0.15 s apart, about 1.2 s in all.
PACED = {
    "channels": 5,
    "erlang_start": 2.0,
    "erlang_stop": 4.0,
    "erlang_step": 2.0,
    "iterations": 4,
    "requests": 2000,
    "pace_seconds": 0.15,
}
PERCENT = re.compile(r"\s(\d+)%\s")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonHarness]:
    harness = DaemonHarness(tmp_path)
    harness.start()
    yield harness
    harness.close()


def runsup(d: DaemonHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
    return subprocess.run(
        [str(RUNSUP), "--config", str(d.config), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_watch_into_a_pipe_prints_plain_progress_lines_until_the_run_ends(
    daemon: DaemonHarness,
) -> None:
    # The run is queued while no daemon serves, so the watch sees it from its first moment.
    daemon.stop()
    run_id = daemon.submit({**PACED, "iterations": 8}, template="erlang-demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
    proc = subprocess.Popen(
        [str(RUNSUP), "--config", str(daemon.config), "watch", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert "watching run" in proc.stdout.readline().decode()
        assert "PENDING" in proc.stdout.readline().decode()
        daemon.start()
        stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    text = stdout.decode()
    assert "\x1b" not in text and "\r" not in text
    lines = [line for line in text.splitlines() if run_id in line]
    percents = [int(m[1]) for line in lines if (m := PERCENT.search(line))]
    assert len(set(percents)) >= 3, text  # the run was followed, not just its end
    assert percents[-1] == 100
    assert "COMPLETED" in lines[-1]
    assert any("load 4 (2/2)" in line and "iteration" in line for line in lines)
    assert text.rstrip().endswith("1 run ended: 1 completed")
    assert daemon.run(run_id).status == "COMPLETED"


def test_watch_without_id_follows_runs_that_start_meanwhile(daemon: DaemonHarness) -> None:
    first = daemon.submit({**PACED, "iterations": 8}, template="erlang-demo")
    daemon.wait_status(first, {"RUNNING"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
    proc = subprocess.Popen(
        [str(RUNSUP), "--config", str(daemon.config), "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline().decode()
        assert "watching 1 run" in header
        second = daemon.submit(PACED, template="erlang-demo")
        stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    text = stdout.decode()
    assert f"{first}" in text and f"{second}" in text
    assert text.rstrip().endswith("2 runs ended: 2 completed")


def test_watch_exit_status_says_a_run_failed(daemon: DaemonHarness) -> None:
    run_id = daemon.submit(
        {"exit_code": 3, "progress": [{"type": "error", "message": "matrix is singular"}]}
    )
    out = runsup(daemon, "watch", run_id)
    assert out.returncode == 1
    last = out.stdout.splitlines()[-2]
    assert "FAILED" in last and "code 3" in last and "matrix is singular" in last


def test_watch_with_nothing_to_watch_and_with_an_unknown_id(daemon: DaemonHarness) -> None:
    out = runsup(daemon, "watch")
    assert out.returncode == 0
    assert "no runs are pending or running" in out.stdout
    out = runsup(daemon, "watch", "0123456789ab")
    assert out.returncode == 1
    assert "no run with id" in out.stderr


def test_watch_on_a_terminal_draws_bars_and_ends(daemon: DaemonHarness) -> None:
    run_id = daemon.submit(PACED, template="erlang-demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
    env.update(TERM="xterm-256color", COLUMNS="100", LINES="30")
    pid, fd = pty.fork()
    if pid == 0:  # the child: runsup with the pty as its terminal
        os.execve(str(RUNSUP), [str(RUNSUP), "--config", str(daemon.config), "watch", run_id], env)
    seen = b""
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    text = seen.decode(errors="replace")
    assert "\x1b[" in text  # redrawn in place
    assert "━" in text  # progress bars
    assert run_id in text and "COMPLETED" in text


def test_logs_prints_the_simulations_output(daemon: DaemonHarness) -> None:
    run_id = daemon.submit(PACED, template="erlang-demo")
    daemon.wait_final(run_id)
    out = runsup(daemon, "logs", run_id)
    assert out.returncode == 0, out.stderr
    assert "erlang-demo: 2 loads x 4 iterations" in out.stdout
    assert "load 4 E: blocking" in out.stdout
    assert "results in results.json" in out.stdout


def test_logs_follow_streams_and_ends_when_the_run_ends(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({**PACED, "iterations": 6}, template="erlang-demo")
    wait_for("the run to start", lambda: daemon.run(run_id).status == "RUNNING")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
    proc = subprocess.Popen(
        [str(RUNSUP), "--config", str(daemon.config), "logs", run_id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert daemon.run(run_id).status == "COMPLETED"
    # Everything up to the simulation's last line, written just before it exited.
    assert stdout.decode().rstrip().endswith("results in results.json")


def test_logs_into_a_closed_pipe_ends_quietly(daemon: DaemonHarness) -> None:
    run_id = daemon.submit({"stdout": "a line of output\n" * 100_000})
    assert daemon.wait_final(run_id).status == "COMPLETED"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'set -o pipefail; "$0" --config "$1" logs {run_id} | head -n 1',
            str(RUNSUP),
            str(daemon.config),
        ],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "a line of output\n"
    assert out.stderr == ""
