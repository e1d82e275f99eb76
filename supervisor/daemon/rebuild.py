"""SIGHUP and the executors: a new `[executors.X]` is built, a changed one rebuilt, a removed
one closed (issue 20, defect 5).

An executor whose settings changed while runs or launches of it are in flight is rebuilt for
new launches, and the old instance is kept ("retired") for the runs it already has: their
handles belong to it, so it goes on being polled until the last of them has ended, then it is
closed. Both count against the executor's `max_submitted` (counted by name)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from supervisor.executors.base import Executor
from supervisor.executors.registry import build_executor
from supervisor.settings import LOCAL_EXECUTOR, Settings

log = structlog.get_logger(__name__)


@dataclass
class Retired:
    """An executor instance replaced by a reload, kept for the runs it had."""

    name: str
    executor: Executor
    run_ids: set[str]


def rebuild_executors(
    executors: dict[str, Executor],
    old: Settings,
    new: Settings,
    in_flight: Callable[[str], set[str]],
    wake: Callable[[], None],
) -> list[Retired]:
    """Bring `executors` (changed in place) to `new`'s tables; returns the retired instances
    that still have runs. `in_flight(name)`: ids of the runs and launches of that executor."""
    retired: list[Retired] = []

    def replace(name: str, made: Executor | None) -> None:
        previous = executors.pop(name, None)
        if made is not None:
            executors[name] = made
        if previous is None:
            return
        ids = in_flight(name)
        if ids:
            retired.append(Retired(name, previous, ids))
        else:
            previous.close()

    for name in set(old.executors) - set(new.executors):
        if name != LOCAL_EXECUTOR:
            replace(name, None)
            log.info("executor_removed", executor=name)
    for name, config in new.executors.items():
        if name in executors and old.executors.get(name) == config:
            continue
        made = build_executor(name, config, wake)
        if made is None:
            continue  # logged; an instance built earlier, if any, goes on serving
        replace(name, made)
        log.info("executor_built", executor=name, max_submitted=config.max_submitted)
    return retired


def close_finished(retired: list[Retired], live: Iterable[str]) -> list[Retired]:
    """Close the retired instances none of whose runs is still in flight; the rest."""
    alive = set(live)
    kept = []
    for old in retired:
        old.run_ids &= alive
        if old.run_ids:
            kept.append(old)
        else:
            old.executor.close()
            log.info("executor_retired_closed", executor=old.name)
    return kept
