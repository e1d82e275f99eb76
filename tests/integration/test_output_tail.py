"""OutputTail on real logs written by a real child process, as a run's keeper sets it up:
the log opened O_APPEND and given to the simulation as its stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sims.fusionsim import ERROR_PATTERN, ITERATION_PATTERN, START_PATTERN

from supervisor.progress import logcap
from supervisor.progress.jsonl import ProgressRecord, ProgressState
from supervisor.progress.patterns import MAX_READ_BYTES, OutputTail, compile_patterns

SIM = Path(__file__).resolve().parents[1] / "sims" / "fusionsim.py"
PATTERNS = compile_patterns([START_PATTERN, ITERATION_PATTERN, ERROR_PATTERN])
DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.01
MEMORY_BOUND_BYTES = 4 * MAX_READ_BYTES
"""Reading a 60 MB burst must not need more than a few read buffers."""

Key = tuple[int | None, int | None]


def start_sim(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """The test simulation with the log as its stdout and stderr (as the keeper's dup2)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        return subprocess.Popen([sys.executable, str(SIM), *args], stdout=fd, stderr=fd)
    finally:
        os.close(fd)


@pytest.fixture
def sims() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """start_sim, with every child killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(log: Path, *args: str) -> subprocess.Popen[bytes]:
        proc = start_sim(log, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def follow(tail: OutputTail, proc: subprocess.Popen[bytes]) -> list[ProgressRecord]:
    """Read as the daemon does (bounded reads) until the child exits and all is read."""
    out: list[ProgressRecord] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        out += tail.read()
        if exited and not tail.more:
            return out + tail.read_to_end()
        if not tail.more:
            time.sleep(POLL_SECONDS)
    raise AssertionError("the simulation did not finish in time")


def expected(loads: int = 3, iterations: int = 6) -> list[Key]:
    """(erlang_index, iteration) of every progress line the simulation prints, in order."""
    out: list[Key] = []
    for index in range(loads):
        out.append((index, None))
        out += [(None, it) for it in range(1, iterations + 1)]
    return out


def keys(records: list[ProgressRecord]) -> list[Key]:
    """(erlang_index, iteration) of each record."""
    return [(r.erlang_index, r.iteration) for r in records]


def fold(records: list[ProgressRecord]) -> ProgressState:
    """Fold records as the daemon does."""
    state = ProgressState()
    for rec in records:
        state = state.fold(rec)
    return state


def test_every_progress_line_once_and_the_final_state(
    tmp_path: Path, sims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "sim.log"
    proc = sims(log, "--interval", "0.002")
    tail = OutputTail(log, PATTERNS)
    records = follow(tail, proc)
    assert proc.returncode == 0
    assert keys(records) == expected()
    state = fold(records)
    assert (state.erlang_index, state.total_erlangs, state.current_erlang) == (2, 3, 400.0)
    assert (state.current_iteration, state.total_iterations) == (6, 6)
    assert tail.offset == log.stat().st_size  # "done" from stdout is read too


def test_error_line_is_an_error_record(
    tmp_path: Path, sims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "sim.log"
    proc = sims(log, "--loads", "100", "--iterations", "1", "--error", "solver diverged")
    records = follow(OutputTail(log, PATTERNS), proc)
    assert proc.returncode == 1
    assert fold(records).last_error == "solver diverged"


def test_hostile_output_long_binary_and_a_million_line_burst(
    tmp_path: Path, sims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "sim.log"
    proc = sims(log, "--long-line", str(1024 * 1024), "--binary", "65536", "--burst", "1000000")
    tail = OutputTail(log, PATTERNS)
    tracemalloc.start()
    try:
        records: list[ProgressRecord] = []
        largest_batch = 0
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            exited = proc.poll() is not None
            batch = tail.read()
            largest_batch = max(largest_batch, len(batch))
            records += batch
            if exited and not tail.more and tail.offset == log.stat().st_size:
                break
            if not tail.more:
                time.sleep(POLL_SECONDS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert proc.returncode == 0
    # The 1 MB line starts like a progress line: skipped whole, not matched.
    assert keys(records) == expected()
    assert tail.long_lines == 1
    assert log.stat().st_size > 50_000_000  # the burst really was written
    assert peak < MEMORY_BOUND_BYTES
    assert largest_batch <= MAX_READ_BYTES // len(b"Iteration 1 out of 6 completed\n")


def paced(tmp_path: Path) -> tuple[Path, Callable[[int], None]]:
    """A gate file for --wait-for and a function that lets the simulation print n lines."""
    gate = tmp_path / "gate"
    gate.write_text("0")

    def let(n: int) -> None:
        tmp = tmp_path / "gate.tmp"
        tmp.write_text(str(n))
        os.replace(tmp, gate)

    return gate, let


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll until condition() holds, or fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


@pytest.mark.parametrize("read_before_cut", ["all", "a little"])
def test_logcap_cut_in_the_middle_never_repeats_a_line(
    tmp_path: Path, sims: Callable[..., subprocess.Popen[bytes]], read_before_cut: str
) -> None:
    log = tmp_path / "sim.log"
    gate, let = paced(tmp_path)
    # Burst first (about 1.1 MB), then load 1 and its first iterations, then wait at the gate.
    proc = sims(log, "--burst", "20000", "--wait-for", str(gate))
    let(4)
    wait_for(lambda: b"Iteration 3 out of 6" in log.read_bytes()[-200:], "the first lines")
    tail = OutputTail(log, PATTERNS, max_read_bytes=64 * 1024)
    before = tail.read_to_end() if read_before_cut == "all" else tail.read()
    assert logcap.bound_log(log, logcap.MIN_CAP_BYTES).removed > 0
    let(10**6)
    after = follow(tail, proc)
    seen = keys(before + after)
    assert tail.resyncs >= 1
    if read_before_cut == "all":
        assert seen == expected()  # nothing lost, nothing twice
    else:
        # Read only the start of the burst before the cut: the first lines went with the
        # cut part, what followed the cut is read once, in order.
        assert seen == expected()[len(expected()) - len(seen) :]
        assert seen[-1] == (None, 6)


def test_cuts_while_the_simulation_writes(
    tmp_path: Path, sims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "sim.log"
    proc = sims(log, "--burst", "200000", "--interval", "0.001", "--iterations", "50")
    tail = OutputTail(log, PATTERNS, max_read_bytes=256 * 1024)
    records: list[ProgressRecord] = []
    cuts = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        records += tail.read()
        cuts += logcap.bound_log(log, 256 * 1024).removed > 0
        if exited and not tail.more and tail.offset == log.stat().st_size:
            break
        time.sleep(POLL_SECONDS)
    assert proc.returncode == 0
    assert cuts >= 1
    # Lines may go with a cut part; none is ever read twice or out of order.
    assert _strictly_increasing(records)
    state = fold(records)
    assert (state.erlang_index, state.current_iteration) == (2, 50)


def _strictly_increasing(records: list[ProgressRecord]) -> bool:
    """Each record is later in the simulation's output than the one before."""
    load, it = -1, 0
    for rec in records:
        if rec.erlang_index is not None:
            if rec.erlang_index <= load:
                return False
            load, it = rec.erlang_index, 0
        elif rec.iteration is not None:
            if rec.iteration <= it and load >= 0:
                return False
            it = rec.iteration
    return True


def test_resume_from_the_saved_offset_after_a_restart(
    tmp_path: Path, sims: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "sim.log"
    gate, let = paced(tmp_path)
    proc = sims(log, "--wait-for", str(gate))
    let(5)
    first = OutputTail(log, PATTERNS)
    got: list[ProgressRecord] = []
    wait_for(lambda: len(got.__iadd__(first.read())) == 5, "five lines")
    saved = first.offset  # what the daemon persisted before it stopped
    let(10**6)
    second = OutputTail(log, PATTERNS, offset=saved)  # the restarted daemon's tail
    rest = follow(second, proc)
    assert keys(got + rest) == expected()
    assert second.resyncs == 0
