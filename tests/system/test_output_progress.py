"""Progress from a simulation's printed lines (SPEC section 12) through the installed daemon:
FUSION's real output format, hostile output among it, an error line, and a daemon restart in
the middle of a run."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonHarness, wait_for

SIM = Path(__file__).parent.parent / "sims" / "fusionsim.py"
sys.path.insert(0, str(SIM.parent))
from fusionsim import ERROR_PATTERN, ITERATION_PATTERN, START_PATTERN  # noqa: E402

LOADS = ["300.0", "350.0", "400.0"]
ITERATIONS = 6


def template(extra: list[str]) -> str:
    command = json.dumps([sys.executable, str(SIM), "--loads", *LOADS, *extra])
    patterns = json.dumps([START_PATTERN, ITERATION_PATTERN, ERROR_PATTERN])
    return f"[templates.fusion]\ncommand = {command}\nprogress_patterns = {patterns}\n"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


def test_printed_progress_lands_in_the_row_among_hostile_output(harness: DaemonHarness) -> None:
    hostile = ["--long-line", str(1024 * 1024), "--binary", "4096", "--burst", "1000000"]
    harness.write_config(template(hostile))
    harness.start()
    run_id = harness.submit({}, template="fusion")
    rec = harness.wait_final(run_id, deadline=60)
    assert rec.status == "COMPLETED", rec.error_message
    assert (rec.current_erlang, rec.current_iteration) == (400.0, ITERATIONS)
    assert (rec.total_erlangs, rec.total_iterations) == (3, ITERATIONS)
    assert rec.output_offset is not None and rec.output_offset > 1024 * 1024


def test_an_error_line_is_the_failed_runs_message(harness: DaemonHarness) -> None:
    harness.write_config(template(["--error", "solver diverged at load 3"]))
    harness.start()
    rec = harness.wait_final(harness.submit({}, template="fusion"))
    assert rec.status == "FAILED" and rec.exit_code == 1
    assert rec.error_message is not None and "solver diverged at load 3" in rec.error_message


def test_a_restart_reads_on_from_where_the_last_daemon_stopped(harness: DaemonHarness) -> None:
    gate = harness.tmp / "gate"
    gate.write_text("3")  # load 1 and its first two iterations
    harness.write_config(template(["--wait-for", str(gate)]))
    harness.start()
    run_id = harness.submit({}, template="fusion")
    wait_for("iteration 2 of load 1", lambda: harness.run(run_id).current_iteration == 2)
    first_offset = harness.run(run_id).output_offset
    harness.kill()
    gate.write_text("9")  # while no daemon watches: up to load 2's first iteration
    wait_for("the simulation's line 9", lambda: b"load 2/3" in _log(harness, run_id))
    harness.start()
    wait_for(
        "load 2 in the row after the restart",
        lambda: (r := harness.run(run_id)).current_erlang == 350.0 and r.current_iteration == 1,
    )
    assert (harness.run(run_id).output_offset or 0) > (first_offset or 0)
    gate.write_text("100")
    rec = harness.wait_final(run_id)
    assert rec.status == "COMPLETED" and rec.current_iteration == ITERATIONS
    assert rec.progress_bad_lines == 0


def _log(h: DaemonHarness, run_id: str) -> bytes:
    try:
        return (h.runs_dir / run_id / "logs" / "sim.log").read_bytes()
    except OSError:
        return b""


def test_a_retry_reads_its_own_output_from_the_first_line(harness: DaemonHarness) -> None:
    # Issue 20 defect 10: the retry kept the failed attempt's output_offset, so the new
    # attempt's log was read from there and its first lines (here the only one giving
    # erlang and total_erlangs) were skipped.
    marker, gate = harness.tmp / "attempted", harness.tmp / "gate"
    sim = [sys.executable, str(SIM), "--iterations", "3"]
    first = shlex.join([*sim, "--loads", *LOADS, "--wait-for", str(gate), "--error", "diverged"])
    second = shlex.join([*sim, "--loads", "500.0"])
    script = f"if [ -e {marker} ]; then exec {second}; fi; touch {marker}; exec {first}"
    patterns = json.dumps([START_PATTERN, ITERATION_PATTERN, ERROR_PATTERN])
    harness.write_config(
        "[templates.fusion]\n"
        f"command = {json.dumps(['/bin/sh', '-c', script])}\n"
        f"progress_patterns = {patterns}\n"
        'max_attempts = 2\nretry_on = ["exit:any"]\nretry_delay_seconds = 0.1\n'
    )
    harness.start()
    run_id = harness.submit({}, template="fusion")
    harness.wait_status(run_id, {"RUNNING"})
    assert harness.store.pause("fusion")  # the retry waits, so its row can be looked at
    gate.write_text("100")
    waiting = wait_for(
        "the retry to wait as attempt 2",
        lambda: r if (r := harness.run(run_id)).status == "PENDING" and r.attempt == 2 else None,
    )
    assert not waiting.output_offset  # the failed attempt's log is not the next one's
    assert harness.store.resume("fusion")
    rec = harness.wait_final(run_id)
    assert rec.status == "COMPLETED", rec.error_message
    assert (rec.attempt, rec.current_erlang, rec.total_erlangs) == (2, 500.0, 1)
    assert (rec.current_iteration, rec.total_iterations) == (3, 3)
