"""What local runs may use together, read from the configuration (SPEC section 10).

Below both the daemon (which schedules against it) and the metrics (which report it), so that
neither has to import the other.
"""

from __future__ import annotations

from supervisor.queue import gpus
from supervisor.queue.scheduling import Capacity
from supervisor.settings import Settings


def capacity_of(settings: Settings) -> Capacity:
    """What local runs may use together, from `[resources]` (GPUs asked of the driver)."""
    r = settings.resources
    return Capacity(
        cpus=settings.cpu_capacity,
        gpu_ids=gpus.resolve_gpus(r.gpus),
        memory_bytes=r.memory_capacity(),
        max_runs=settings.max_concurrent_runs,
    )
