"""Long runs on this machine (SPEC section 15; issue 21): the checkpoint signal before
`timeout_seconds`, then the limit, then a resumed attempt; `checkpoint_exit_code`; a cancel.

The simulation (tests/sims/ckptsim.py) saves its step to checkpoint.json in its run directory
on SIGUSR1 and starts from it when RUNSUP_RESUME=1; steps.log shows every step each attempt
computed, signals.log every signal it caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ckpt_harness import ckpt_template, recomputed, signals_seen, steps_done
from daemon_harness import DaemonHarness, wait_for

STEPS = 10
DEADLINE = 60.0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    h.write_config(
        ckpt_template(
            "limited",
            timeout_seconds=3.0,
            max_attempts=8,
            retry_on=["timeout"],
            retry_delay_seconds=0,
            resume=True,
            checkpoint_signal="USR1",
            checkpoint_seconds=1.5,
        )
        + ckpt_template("selfckpt", max_attempts=1, resume=True, checkpoint_exit_code=85)
        + ckpt_template(
            "retried",
            max_attempts=2,
            retry_on=["exit:3"],
            retry_delay_seconds=0,
            resume=True,
            checkpoint_exit_code=85,
        )
        + ckpt_template(
            "noresume",
            max_attempts=2,
            retry_on=["timeout"],
            retry_delay_seconds=0,
            timeout_seconds=2.0,
            checkpoint_signal="USR1",
            checkpoint_seconds=1.0,
        )
    )
    h.start()
    yield h
    h.close()


def _run_dir(h: DaemonHarness, run_id: str) -> Path:
    return h.runs_dir / run_id


def test_signal_then_limit_then_resume(harness: DaemonHarness) -> None:
    run_id = harness.submit({"steps": STEPS, "step_seconds": 0.4}, template="limited")
    final = harness.wait_final(run_id, DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    attempts = final.attempt or 0
    assert attempts >= 2
    run_dir = _run_dir(harness, run_id)
    assert sorted({s for _, s in steps_done(run_dir)}) == list(range(1, STEPS + 1))
    assert sum(recomputed(run_dir).values()) == 0  # the step under way was lost, none twice
    # Every attempt but the last was warned, once, and then ended at its limit.
    warned = [a for a, name, _ in signals_seen(run_dir) if name == "SIGUSR1"]
    assert warned == list(range(1, attempts))
    reasons = [e.reason or "" for e in harness.store.events(run_id)]
    timeouts = [r for r in reasons if "ended timeout" in r]
    assert len(timeouts) == attempts - 1, reasons
    # Each later attempt carried on from the checkpoint its predecessor saved.
    firsts = {}
    for attempt, step in steps_done(run_dir):
        firsts.setdefault(attempt, step)
    lasts = {a: s for a, s in steps_done(run_dir)}
    for attempt in range(2, attempts + 1):
        if attempt in firsts and attempt - 1 in lasts:
            assert firsts[attempt] == lasts[attempt - 1] + 1


def test_checkpoint_exit_code_starts_again_beyond_max_attempts(harness: DaemonHarness) -> None:
    config = {"steps": 7, "step_seconds": 0.05, "checkpoint_every": 2}
    run_id = harness.submit(config, template="selfckpt")
    final = harness.wait_final(run_id, DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert final.attempt == 4  # 2 + 2 + 2 + 1 steps, with max_attempts = 1
    events = harness.store.events(run_id)
    checkpointed = [e for e in events if (e.reason or "").startswith("checkpointed")]
    assert len(checkpointed) == 3
    assert all((e.from_status, e.to_status) == ("RUNNING", "PENDING") for e in checkpointed)
    assert [s for _, s in steps_done(_run_dir(harness, run_id))] == list(range(1, 8))


def test_other_exit_codes_follow_retry_on_and_checkpoints_do_not_count(
    harness: DaemonHarness,
) -> None:
    # max_attempts = 2, yet attempt 3 runs: attempts 1 and 2 checkpointed (85), not failed.
    config = {"steps": 6, "step_seconds": 0.05, "checkpoint_every": 2, "exit_code": 85}
    run_id = harness.submit(config, template="retried")
    final = harness.wait_final(run_id, DEADLINE)
    assert final.status == "COMPLETED", final.error_message
    assert final.attempt == 3
    # Exit 3 is no checkpoint: retried as retry_on says, then FAILED at max_attempts.
    failing = harness.submit({"steps": 4, "checkpoint_every": 1, "exit_code": 3}, "retried")
    final = harness.wait_final(failing, DEADLINE)
    assert (final.status, final.exit_code, final.attempt) == ("FAILED", 3, 2)


def test_without_resume_no_attempt_is_told_to_resume(harness: DaemonHarness) -> None:
    run_id = harness.submit({"steps": 100, "step_seconds": 0.1}, template="noresume")
    final = harness.wait_final(run_id, DEADLINE)
    assert (final.status, final.attempt) == ("FAILED", 2)
    run_dir = _run_dir(harness, run_id)
    assert (run_dir / "checkpoint.json").exists()  # saved by attempt 1, left in place
    starts = [s for a, s in steps_done(run_dir) if a == 2]
    assert starts and starts[0] == 1  # attempt 2 was not told to resume: it started over


def test_a_cancel_after_the_warning_is_never_resumed(harness: DaemonHarness) -> None:
    run_id = harness.submit({"steps": STEPS, "step_seconds": 0.4}, template="limited")
    run_dir = _run_dir(harness, run_id)
    wait_for("the warning", lambda: signals_seen(run_dir), DEADLINE)
    assert harness.store.request_cancel(run_id)
    final = harness.wait_final(run_id, DEADLINE)
    assert final.status == "CANCELLED"
    assert final.attempt in (None, 1)  # the first attempt's row keeps attempt NULL today
    assert {a for a, _ in steps_done(run_dir)} == {1}
