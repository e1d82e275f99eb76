"""The queue's pure decisions: retry delays and matches, sweeps, cycles, archived attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervisor import outcome as outcomes
from supervisor.daemon.queuekeeper import archive_attempt
from supervisor.errors import ValidationError
from supervisor.queue.rules import (
    MAX_RETRY_DELAY_SECONDS,
    attempt_number,
    expand_sweep,
    find_cycles,
    outcome_matches,
    plan_retry,
    retry_delay_seconds,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SIGNAL = outcomes.classify_exit(
    exit_code=None, exit_signal=11, cancel_requested=False, timed_out=False
)


def test_delay_doubles_up_to_an_hour() -> None:
    assert [retry_delay_seconds(10, a) for a in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert retry_delay_seconds(10, 9) == 2560
    assert retry_delay_seconds(10, 10) == MAX_RETRY_DELAY_SECONDS == 3600
    assert retry_delay_seconds(10, 10_000) == 3600
    assert retry_delay_seconds(0, 5) == 0


def test_attempt_null_counts_as_one() -> None:
    assert attempt_number(None) == 1 and attempt_number(0) == 1 and attempt_number(3) == 3


def test_outcome_kinds_from_how_runs_end() -> None:
    assert SIGNAL.kind == "signal"
    code = outcomes.classify_exit(
        exit_code=3, exit_signal=None, cancel_requested=False, timed_out=False
    )
    assert code.kind == "exit:3"
    timeout = outcomes.classify_exit(
        exit_code=None, exit_signal=9, cancel_requested=False, timed_out=True
    )
    assert timeout.kind == "timeout"
    assert outcomes.lost("gone").kind == "lost"
    assert outcomes.not_started("no such program").kind is None
    cancel = outcomes.classify_exit(
        exit_code=None, exit_signal=15, cancel_requested=True, timed_out=False
    )
    assert cancel.kind is None
    done = outcomes.classify_exit(
        exit_code=0, exit_signal=None, cancel_requested=False, timed_out=False
    )
    assert done.kind is None


def test_matches() -> None:
    assert outcome_matches("exit:3", ["exit:any"])
    assert outcome_matches("exit:3", ["exit:3"]) and not outcome_matches("exit:3", ["exit:4"])
    assert outcome_matches("signal", ["signal", "lost"]) and not outcome_matches(
        "timeout", ["signal"]
    )
    assert not outcome_matches(None, ["exit:any", "signal"])


def test_plan_retry() -> None:
    plan = plan_retry(
        SIGNAL, attempt=None, max_attempts=3, retry_on=["signal"], delay_seconds=10, now=NOW
    )
    assert plan is not None
    assert plan.attempt == 2 and plan.not_before == NOW + timedelta(seconds=10)
    assert "attempt 1 of 3 ended signal" in plan.reason
    second = plan_retry(
        SIGNAL, attempt=2, max_attempts=3, retry_on=["signal"], delay_seconds=10, now=NOW
    )
    assert second is not None and second.not_before == NOW + timedelta(seconds=20)
    assert (
        plan_retry(
            SIGNAL, attempt=3, max_attempts=3, retry_on=["signal"], delay_seconds=10, now=NOW
        )
        is None
    )
    assert (
        plan_retry(SIGNAL, attempt=1, max_attempts=3, retry_on=["lost"], delay_seconds=10, now=NOW)
        is None
    )
    never = outcomes.not_started("x")
    assert (
        plan_retry(
            never,
            attempt=1,
            max_attempts=3,
            retry_on=["exit:any", "signal", "lost"],
            delay_seconds=1,
            now=NOW,
        )
        is None
    )


def test_sweep_is_the_cartesian_product_with_names() -> None:
    points = expand_sweep(["channels=10,20,40", "load=5,10"])
    assert [p.name for p in points] == [
        "channels=10 load=5",
        "channels=10 load=10",
        "channels=20 load=5",
        "channels=20 load=10",
        "channels=40 load=5",
        "channels=40 load=10",
    ]
    assert points[0].as_set_pairs() == ["channels=10", "load=5"]
    for bad in (["x"], ["=1"], ["x=1,"], ["x=1", "x=2"]):
        with pytest.raises(ValidationError):
            expand_sweep(bad)
    with pytest.raises(ValidationError, match="combinations"):
        expand_sweep(["a=" + ",".join(map(str, range(200))), "b=" + ",".join(map(str, range(200)))])


def test_cycles_are_found_and_named() -> None:
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a"), ("e", "e"), ("f", "g")]
    found = find_cycles(edges)
    assert found == {
        "a": "a -> b -> c -> a",
        "b": "a -> b -> c -> a",
        "c": "a -> b -> c -> a",
        "e": "e -> e",
    }
    assert find_cycles([("x", "y"), ("y", "z")]) == {}
    # A long chain closing on itself: no recursion limit.
    chain = [(str(i), str(i + 1)) for i in range(5000)] + [("5000", "0")]
    assert len(find_cycles(chain)) == 5001


def test_archive_attempt_moves_once_and_never_takes_a_later_launch(tmp_path: Path) -> None:
    run_dir = tmp_path / "abc"
    (run_dir / ".runsup").mkdir(parents=True)
    (run_dir / ".runsup" / "exit").write_text("139")
    (run_dir / "progress.jsonl").write_text('{"iteration": 3}\n')
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "sim.log").write_text("attempt 1\n")
    assert sorted(archive_attempt(run_dir, 1)) == [".runsup", "progress.jsonl", "sim.log"]
    assert (run_dir / "attempt-1" / ".runsup" / "exit").read_text() == "139"
    assert not (run_dir / "progress.jsonl").exists()
    # Repeated (a crash after the move): the next launch's files stay where they are.
    (run_dir / ".runsup").mkdir()
    (run_dir / ".runsup" / "pid").write_text("new")
    assert archive_attempt(run_dir, 1) == []
    assert (run_dir / ".runsup" / "pid").read_text() == "new"
