"""What every owner in the daemon uses and none owns: the live settings, the store, the clock,
the outbox, the selector, the executors, and the two ways to make the loop look again."""

from __future__ import annotations

import selectors
from collections.abc import Callable
from dataclasses import dataclass

from supervisor.daemon.clock import Clock
from supervisor.daemon.outbox import Outbox
from supervisor.db import Store
from supervisor.executors.base import Executor
from supervisor.settings import Settings


@dataclass
class Services:
    """Built by the loop and handed down at construction; `settings` is replaced on SIGHUP, so
    owners read it here each time instead of keeping a copy."""

    settings: Settings
    store: Store
    clock: Clock
    outbox: Outbox
    selector: selectors.BaseSelector
    executors: dict[str, Executor]
    wake: Callable[[], None]  # look around now (any thread)
    poll_db_soon: Callable[[], None]  # look at the database at the next pass
