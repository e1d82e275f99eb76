"""The erlang-demo simulation run as the daemon runs it: a subprocess in a run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

# Generous for a loaded CI machine; a normal run takes well under a second.
RUN_TIMEOUT_SECONDS = 30.0
# How long a cancel may take end to end (process start excluded); the
# simulation itself reacts within milliseconds.
CANCEL_DEADLINE_SECONDS = 2.0
POLL_SECONDS = 0.01


def _env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RUNSUP_RUN_ID="0123456789ab",
        RUNSUP_RUN_DIR=str(run_dir),
        RUNSUP_PROGRESS_FILE=str(run_dir / "progress.jsonl"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _prepare(run_dir: Path, config: dict[str, Any] | str) -> list[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (run_dir / "config.json").write_text(text)
    return [sys.executable, "-m", "supervisor.demo_sim", "--config", str(run_dir / "config.json")]


def _run(run_dir: Path, config: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _prepare(run_dir, config),
        cwd=run_dir,
        env=_env(run_dir),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], subprocess.Popen[str]]]:
    """Start the simulation in the background; kill whatever is left at the end."""
    procs: list[subprocess.Popen[str]] = []

    def _start(config: dict[str, Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            _prepare(tmp_path, config),
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=RUN_TIMEOUT_SECONDS)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "progress.jsonl").read_text()
    assert text.endswith("\n"), "the last record must be a complete line"
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        assert isinstance(record, dict)
        stamp = datetime.fromisoformat(record["ts"])
        assert stamp.utcoffset() == UTC.utcoffset(None)
    return records


def _wait_for_record(run_dir: Path, proc: subprocess.Popen[str], record_type: str) -> None:
    """Poll progress.jsonl until a complete line of `record_type` appears, or fail."""
    path = run_dir / "progress.jsonl"
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines(keepends=True):
                if line.endswith("\n") and json.loads(line).get("type") == record_type:
                    return
        assert proc.poll() is None, f"simulation exited early with {proc.returncode}"
        time.sleep(POLL_SECONDS)
    pytest.fail(f"no {record_type!r} record within {RUN_TIMEOUT_SECONDS} s")


def test_progress_protocol_is_complete_and_in_order(tmp_path: Path) -> None:
    config = {
        "channels": 5,
        "erlang_start": 2,
        "erlang_stop": 4,
        "erlang_step": 1,
        "iterations": 4,
        "requests": 2000,
    }
    proc = _run(tmp_path, config)
    assert proc.returncode == 0, proc.stderr
    records = _records(tmp_path)
    loads, iterations = [2.0, 3.0, 4.0], 4

    start, *middle, complete = records
    assert start["type"] == "start"
    assert start["config"]["total_erlangs"] == len(loads)
    assert start["config"]["total_iterations"] == iterations
    assert complete == {"type": "complete", "ts": complete["ts"], "exit_code": 0}

    per_load = 1 + iterations + 1  # erlang_start, iterations, erlang_complete
    assert len(middle) == len(loads) * per_load
    for index, load in enumerate(loads):
        block = middle[index * per_load : (index + 1) * per_load]
        assert block[0] == {
            "type": "erlang_start",
            "ts": block[0]["ts"],
            "erlang": load,
            "erlang_index": index,
            "total_erlangs": len(loads),
        }
        for number, record in enumerate(block[1:-1], start=1):
            assert record["type"] == "iteration"
            assert (record["erlang"], record["iteration"]) == (load, number)
            assert record["total_iterations"] == iterations
            assert 0.0 <= record["metrics"]["blocking_prob"] <= 1.0
        done = block[-1]
        assert (done["type"], done["erlang"]) == ("erlang_complete", load)
        metrics = done["metrics"]
        assert metrics["ci_low"] <= metrics["mean_blocking"] <= metrics["ci_high"]
        assert set(metrics) >= {"ci_half_width", "exact_blocking"}

    stamps = [datetime.fromisoformat(r["ts"]) for r in records]
    assert stamps == sorted(stamps)

    results = json.loads((tmp_path / "results.json").read_text())["loads"]
    assert [r["erlang"] for r in results] == loads
    assert all(r["channels"] == 5 for r in results)
    assert [r["mean_blocking"] for r in results] == [
        r["metrics"]["mean_blocking"] for r in records if r["type"] == "erlang_complete"
    ]
    # One human line per load, in the run's log.
    assert sum(line.startswith("load ") for line in proc.stdout.splitlines()) == len(loads)


def test_results_depend_only_on_the_seed(tmp_path: Path) -> None:
    config = {"erlang_start": 8, "erlang_stop": 10, "iterations": 3, "requests": 3000, "seed": 42}
    first = _run(tmp_path / "a", config)
    again = _run(tmp_path / "b", config)
    # Pacing changes timing, never the numbers.
    paced = _run(tmp_path / "c", {**config, "pace_seconds": 0.01})
    other = _run(tmp_path / "d", {**config, "seed": 43})
    for proc in (first, again, paced, other):
        assert proc.returncode == 0, proc.stderr

    def results(name: str) -> str:
        return (tmp_path / name / "results.json").read_text()

    assert results("a") == results("b") == results("c")
    assert results("a") != results("d")


@pytest.mark.parametrize(
    ("sig", "config", "wait_for"),
    [
        # A billion arrivals per iteration: only the cancel check can end it.
        (signal.SIGTERM, {"requests": 10**9}, "erlang_start"),
        # Stopped while sleeping between iterations.
        (signal.SIGINT, {"requests": 100, "pace_seconds": 600}, "iteration"),
    ],
    ids=["SIGTERM-while-simulating", "SIGINT-while-pacing"],
)
def test_signal_ends_the_run_promptly_and_cleanly(
    tmp_path: Path,
    start: Callable[[dict[str, Any]], subprocess.Popen[str]],
    sig: signal.Signals,
    config: dict[str, Any],
    wait_for: str,
) -> None:
    proc = start(config)
    _wait_for_record(tmp_path, proc, wait_for)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=CANCEL_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {CANCEL_DEADLINE_SECONDS} s after {sig.name}")
    elapsed = time.monotonic() - sent
    _, stderr = proc.communicate(timeout=RUN_TIMEOUT_SECONDS)

    assert proc.returncode == 128 + sig, stderr
    last = _records(tmp_path)[-1]
    assert last["type"] == "error"
    assert last["message"] == f"cancelled by signal {sig.name}"
    assert (last["signal"], last["exit_code"]) == (sig.name, 128 + sig)
    assert not (tmp_path / "results.json").exists()
    assert elapsed < CANCEL_DEADLINE_SECONDS


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"channels": 0}, "channels"),
        ({"iterations": "many"}, "iterations"),
        ({"erlang_start": 10, "erlang_stop": 1}, "erlang_stop"),
        ("not json at all", "not valid JSON"),
    ],
)
def test_bad_config_exits_2_with_an_error_record(
    tmp_path: Path, config: dict[str, Any] | str, needle: str
) -> None:
    proc = _run(tmp_path, config)
    assert proc.returncode == 2
    assert needle in proc.stderr
    [record] = _records(tmp_path)
    assert record["type"] == "error"
    assert needle in record["message"]
    assert not (tmp_path / "results.json").exists()


def test_unexpected_failure_exits_1_with_traceback(tmp_path: Path) -> None:
    # A directory where results.json should go makes the final write fail.
    (tmp_path / "results.json").mkdir(parents=True)
    proc = _run(tmp_path, {"erlang_start": 5, "erlang_stop": 5, "requests": 100})
    assert proc.returncode == 1
    last = _records(tmp_path)[-1]
    assert last["type"] == "error"
    assert "IsADirectoryError" in last["message"]
    assert "Traceback" in last["traceback"]
    assert "IsADirectoryError" in proc.stderr


def test_progress_file_falls_back_to_the_working_directory(tmp_path: Path) -> None:
    env = _env(tmp_path)
    del env["RUNSUP_PROGRESS_FILE"]
    proc = subprocess.run(
        _prepare(tmp_path, {"erlang_start": 5, "erlang_stop": 5, "requests": 100}),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _records(tmp_path)[-1]["type"] == "complete"
