"""The daemon's checkpoint decisions (SPEC section 15), pure: the warning, a checkpointed exit."""

from __future__ import annotations

import signal

from supervisor.daemon import checkpoints
from supervisor.daemon.runstate import RunState
from supervisor.executors.base import ExitStatus
from supervisor.outcome import CHECKPOINTED
from supervisor.settings import Template
from supervisor.states import RunStatus

WARNED = Template(
    name="t",
    command=("sim",),
    checkpoint_signal="USR1",
    checkpoint_seconds=30.0,
    checkpoint_exit_code=85,
)


def _state() -> RunState:
    return RunState(grace_seconds=5.0, timeout_at=100.0)


def test_the_loop_warns_only_where_the_executor_does_not() -> None:
    assert checkpoints.warning_at(WARNED, 100.0, sent_by_executor=False) == (
        70.0,
        signal.SIGUSR1,
    )
    assert checkpoints.warning_at(WARNED, 100.0, sent_by_executor=True) == (None, None)
    assert checkpoints.warning_at(WARNED, None, sent_by_executor=False) == (None, None)
    plain = Template(name="p", command=("sim",))
    assert checkpoints.warning_at(plain, 100.0, sent_by_executor=False) == (None, None)


def test_a_checkpoint_exit_goes_on_unless_cancelled_or_timed_out() -> None:
    out = checkpoints.checkpointed(WARNED, _state(), ExitStatus(85, None))
    assert out is not None and (out.status, out.kind) == (RunStatus.PENDING, CHECKPOINTED)
    assert checkpoints.checkpointed(WARNED, _state(), ExitStatus(3, None)) is None
    assert checkpoints.checkpointed(WARNED, _state(), ExitStatus(None, 15)) is None
    cancelled = _state()
    cancelled.request_cancel(1.0)
    assert checkpoints.checkpointed(WARNED, cancelled, ExitStatus(85, None)) is None
    timed_out = _state()
    timed_out.tick(100.0)
    assert checkpoints.checkpointed(WARNED, timed_out, ExitStatus(85, None)) is None


def test_a_checkpoint_that_cannot_go_on_is_the_exit_it_was() -> None:
    out = checkpoints.checkpointed(WARNED, _state(), ExitStatus(85, None))
    assert out is not None
    plain = checkpoints.as_plain_exit(out)
    assert (plain.status, plain.exit_code, plain.kind) == (RunStatus.FAILED, 85, "exit:85")
