"""`runsup demo`, installed and for real: results table, Erlang B agreement, no process left."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import RUNSUP, isolated_env
from daemon_harness import wait_for
from png_checks import assert_png_drawn

from supervisor.cli.demo import DEMO_CHANNELS, DEMO_RUNS
from supervisor.db import Store
from supervisor.demo_sim import erlang_b

MARKER = "RUNSUP_TEST_DEMO_MARKER"
DEMO_TIMEOUT_SECONDS = 60  # the demo takes about 15 s; the issue allows a minute
STOP_DEADLINE_SECONDS = 15.0  # after SIGINT, the demo must be gone this soon
ROW = re.compile(
    r"^(?P<load>\d+(?:\.\d+)?)\s+(?P<mean>0\.\d+)\s+(?P<low>0\.\d+) \.\. (?P<high>0\.\d+)\s+"
    r"(?P<exact>0\.\d+)\s+\S+\s+(?P<within>yes|NO)$"
)


def marked(token: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries MARKER=token."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_marked(token: str) -> None:
    """Test teardown: whatever the demo left, kill it."""
    for proc in marked(token):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def demo_env(tmp_path: Path, token: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # TMPDIR: a demo killed outright cannot remove its temporary state directory.
    return isolated_env(home, {MARKER: token, "TMPDIR": str(tmp_path)})


def expected_loads() -> list[float]:
    loads = []
    for _, start, stop, step in DEMO_RUNS:
        load = start
        while load <= stop + 1e-9:
            loads.append(load)
            load += step
    return loads


def test_demo_prints_results_that_agree_with_erlang_b(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    state = tmp_path / "state"
    try:
        out = subprocess.run(
            [str(RUNSUP), "demo", "--state-dir", str(state)],
            env=demo_env(tmp_path, token),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert not marked(token), "the demo left processes behind"
    finally:
        kill_marked(token)
    # Not a terminal: plain lines, no control codes.
    assert "\x1b" not in out.stdout
    assert "RUNNING" in out.stdout and "COMPLETED" in out.stdout

    rows = [m for line in out.stdout.splitlines() if (m := ROW.match(line.strip()))]
    assert sorted(float(m["load"]) for m in rows) == expected_loads()
    # The same comparison as a picture (matplotlib comes with the test extra).
    assert f"picture: {state / 'erlang-b.png'}" in out.stdout
    assert_png_drawn(state / "erlang-b.png")
    for m in rows:
        # The printed exact value is Erlang B, and the verdict matches the interval.
        exact = erlang_b(float(m["load"]), DEMO_CHANNELS)
        assert float(m["exact"]) == pytest.approx(exact, abs=6e-6)
        inside = float(m["low"]) <= float(m["exact"]) <= float(m["high"])
        assert (m["within"] == "yes") == inside
    verdict = re.search(r"interval\s+for (\d+) of (\d+) loads", out.stdout)
    assert verdict is not None
    assert int(verdict[2]) == len(rows)

    # The database the demo kept: every run COMPLETED, results.json beside each.
    store = Store.open(f"sqlite:///{state / 'runs.db'}")
    try:
        records = store.list_runs()
    finally:
        store.close()
    assert len(records) == len(DEMO_RUNS)
    assert {r.status for r in records} == {"COMPLETED"}
    results = []
    for r in records:
        assert r.run_dir is not None
        results += json.loads((Path(r.run_dir) / "results.json").read_text())["loads"]
    # 95% intervals: with 8 loads, 6 or more contain the exact value with probability > 99%.
    covered = sum(
        1 for x in results if x["ci_low"] <= erlang_b(x["erlang"], x["channels"]) <= x["ci_high"]
    )
    assert covered >= len(results) - 2, results
    for x in results:
        assert x["exact_blocking"] == pytest.approx(erlang_b(x["erlang"], x["channels"]))
        assert x["mean_blocking"] == pytest.approx(x["exact_blocking"], rel=0.15)


def read_until(proc: subprocess.Popen[bytes], needle: bytes, deadline: float) -> bytes:
    """Read the child's stdout until `needle` shows up; fail at the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    end = time.monotonic() + deadline
    while needle not in seen:
        remaining = end - time.monotonic()
        assert remaining > 0, f"no {needle!r} in {deadline} s; got:\n{seen.decode()}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the demo closed stdout (exit {proc.poll()}):\n{seen.decode()}"
            seen += chunk
    return seen


def demo_statuses(state: Path) -> set[str]:
    """The statuses of the runs in the demo's database under `state`."""
    (db,) = state.rglob("runs.db")
    store = Store.open(f"sqlite:///{db}", upgrade=False)
    try:
        return {record.status for record in store.list_runs()}
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_interrupted_cancels_runs_and_leaves_no_process(tmp_path: Path, sig: int) -> None:
    token = uuid.uuid4().hex
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [str(RUNSUP), "demo", "--state-dir", str(state)],
        env=demo_env(tmp_path, token),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, like a shell job: Ctrl-C goes to the group
    )
    try:
        read_until(proc, b" RUNNING ", DEMO_TIMEOUT_SECONDS)
        # Simulations are running and their keepers and the daemon with them.
        assert len(marked(token)) >= 3
        os.killpg(proc.pid, sig)
        proc.wait(STOP_DEADLINE_SECONDS)  # how soon it is gone is a figure (bench/)
        assert proc.returncode == 128 + sig
        assert not marked(token), "the demo left processes behind"
        # Its runs were cancelled through the database, not left RUNNING for a next daemon.
        statuses = demo_statuses(state)
        assert "CANCELLED" in statuses and statuses <= {"CANCELLED", "COMPLETED"}, statuses
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        kill_marked(token)
    store = Store.open(f"sqlite:///{state / 'runs.db'}")
    try:
        statuses = {r.status for r in store.list_runs()}
    finally:
        store.close()
    assert statuses <= {"CANCELLED", "COMPLETED"}, statuses
    assert "CANCELLED" in statuses


def test_demo_killed_outright_still_leaves_no_process(tmp_path: Path) -> None:
    # SIGKILL gives the demo no chance to clean up: the daemon gets SIGTERM from the kernel
    # (parent-death signal) and, with on_stop = "cancel", cancels the runs and exits.
    token = uuid.uuid4().hex
    proc = subprocess.Popen(
        [str(RUNSUP), "demo"],
        env=demo_env(tmp_path, token),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        read_until(proc, b" RUNNING ", DEMO_TIMEOUT_SECONDS)
        proc.kill()
        proc.wait()
        wait_for("the demo's daemon and runs to end", lambda: not marked(token), 15.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        kill_marked(token)
