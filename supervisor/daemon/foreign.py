"""Runs another program started (SPEC section 3): watched, cancelled and settled like ours."""

from __future__ import annotations

import structlog

from supervisor import outcome as outcomes
from supervisor import rundir
from supervisor.daemon.services import Services
from supervisor.daemon.supervision import Supervision
from supervisor.daemon.tracked import read_on, record_dir_of
from supervisor.db import RunRecord, foreign_identity_change
from supervisor.executors.local.identity import current_boot_id
from supervisor.settings import LOCAL_EXECUTOR

log = structlog.get_logger(__name__)


class ForeignRuns:
    """Takes on RUNNING rows no daemon started."""

    def __init__(self, services: Services, supervision: Supervision) -> None:
        self._s = services
        self._sup = supervision

    def watch(self) -> None:
        """Take on RUNNING rows another program started: watch, cancel and settle them."""
        for record in self._s.store.foreign_running():
            if not self._sup.knows(record.id):
                self.adopt(record)

    def adopt(self, record: RunRecord) -> None:
        """Watch this foreign run, or settle it by its progress if its group is gone."""
        settings = self._s.settings
        run_dir = record_dir_of(record, settings.runs_dir)
        same_boot = record.boot_id == current_boot_id()
        handle = self._s.executors[LOCAL_EXECUTOR].adopt_foreign(
            record.id,
            pid=record.pid,
            pgid=record.pgid,
            started_at=record.started_at,
            start_ticks=record.pid_start_ticks if same_boot else None,
            record_dir=rundir.record_dir(run_dir),
        )
        if handle is None:
            # Every process of its group has exited: settle it by what its progress says.
            template = settings.templates.get(record.template)
            state, update = read_on(record, run_dir, template)
            self._s.outbox.progress(update)
            out = outcomes.foreign_end(completed_ok=state.completed_ok, last_error=state.last_error)
            self._sup.settle(record.id, out, reason=f"{out.reason} (started by another program)")
            return
        proc = handle.record
        if record.pid_start_ticks != proc.start_ticks or not same_boot:
            self._s.outbox.add(foreign_identity_change(record.id, proc))
        template = settings.templates.get(record.template)
        run = self._sup.track(record, handle, run_dir, template, foreign=True)
        if handle.exit_status() is not None:
            self._sup.on_exit(run.run_id)
