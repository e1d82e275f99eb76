"""The executors a configuration names: `local` always, one per `[executors.NAME]`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import structlog

from supervisor.executors.base import Executor
from supervisor.executors.local.executor import LocalExecutor
from supervisor.settings import LOCAL_EXECUTOR, Settings

log = structlog.get_logger(__name__)


def build_executors(
    settings: Settings, wake: Callable[[], None], local: Executor | None = None
) -> dict[str, Executor]:
    """Every configured executor by name; `wake` makes the loop look (from their threads)."""
    executors: dict[str, Executor] = {LOCAL_EXECUTOR: local or LocalExecutor()}
    for name, config in settings.executors.items():
        try:
            # Imported only when configured (a local-only daemon never loads it).
            module = importlib.import_module(f"supervisor.executors.{config.kind}.executor")
            factory = module.make_executor
        except (ImportError, AttributeError) as exc:
            log.error("executor_unavailable", executor=name, kind=config.kind, error=str(exc))
            continue
        executors[name] = factory(name, config, wake=wake)
    return executors
