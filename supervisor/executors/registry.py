"""The executors a configuration names: `local` always, one per `[executors.NAME]`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import structlog

from supervisor.executors.base import Executor
from supervisor.executors.local.executor import LocalExecutor
from supervisor.settings import LOCAL_EXECUTOR, ExecutorSettings, Settings

log = structlog.get_logger(__name__)


def build_executors(
    settings: Settings, wake: Callable[[], None], local: Executor | None = None
) -> dict[str, Executor]:
    """Every configured executor by name; `wake` makes the loop look (from their threads)."""
    executors: dict[str, Executor] = {LOCAL_EXECUTOR: local or LocalExecutor()}
    for name, config in settings.executors.items():
        made = build_executor(name, config, wake)
        if made is not None:
            executors[name] = made
    return executors


def build_executor(
    name: str, config: ExecutorSettings, wake: Callable[[], None]
) -> Executor | None:
    """The executor for one `[executors.NAME]` table, or None (logged) if it cannot be built."""
    try:
        # Imported only when configured (a local-only daemon never loads it).
        module = importlib.import_module(f"supervisor.executors.{config.kind}.executor")
        factory = module.make_executor
    except (ImportError, AttributeError) as exc:
        log.error("executor_unavailable", executor=name, kind=config.kind, error=str(exc))
        return None
    try:
        made: Executor = factory(name, config, wake=wake)
    except Exception as exc:  # a reload must not kill the daemon over one executor
        log.error("executor_unavailable", executor=name, kind=config.kind, error=str(exc))
        return None
    return made
