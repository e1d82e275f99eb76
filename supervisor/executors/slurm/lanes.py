"""The Slurm executor's worker lanes: a thread each, running operations in order from a queue.

A slow command of one kind never holds up the others: `submit` (sbatch), `query` (the batched
status query and the stand-ins it starts and ends) and `control` (scancel, look-ups by name).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

Op = Callable[[], None]


class Lane:
    """One thread running operations in order from its queue; a failed one never stops it.
    `idle_timeout()` says how long to wait for the next one (None: forever) and `on_idle` runs
    when that passes with nothing to do."""

    def __init__(
        self,
        name: str,
        *,
        idle_timeout: Callable[[], float | None] = lambda: None,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._ops: queue.Queue[Op | None] = queue.Queue()
        self._idle_timeout = idle_timeout
        self._on_idle = on_idle
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def put(self, op: Op) -> None:
        """Run `op` on this lane after what is queued before it."""
        self._ops.put(op)

    def _work(self) -> None:
        while True:
            try:
                op = self._ops.get(timeout=self._idle_timeout())
            except queue.Empty:
                self._on_idle()
                continue
            if op is None:
                return
            try:
                op()
            except Exception as exc:  # one failed operation never stops the lane
                log.error("slurm_worker_error", lane=self.name, error=str(exc), exc_info=True)

    def stop(self, timeout: float) -> None:
        """Stop after the operation under way (waiting at most `timeout`)."""
        self._ops.put(None)
        self._thread.join(timeout)
