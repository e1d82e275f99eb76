"""Progress of the tracked runs: both tails (progress.jsonl and the log's lines), what was read
since the last flush, what has more to read, and the cap on each run's log."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

from supervisor import rundir
from supervisor.daemon.services import Services
from supervisor.daemon.tracked import TrackedRun
from supervisor.progress import logcap
from supervisor.progress.patterns import MAX_READ_BYTES
from supervisor.settings import LOCAL_EXECUTOR

log = structlog.get_logger(__name__)


class ProgressFeed:
    """Reads the tracked runs' progress and queues it in the outbox when it changed."""

    def __init__(self, services: Services, runs: Mapping[str, TrackedRun]) -> None:
        self._s = services
        self._runs = runs  # read only: supervision owns the table
        self._progress_read: set[str] = set()  # runs whose tail was read since the last flush
        self._read_again: set[str] = set()  # runs with more to read than one read takes

    @property
    def has_more(self) -> bool:
        """True if some run has more to read than one read took (the loop must not wait)."""
        return bool(self._read_again)

    def take_read_again(self) -> set[str]:
        """The runs with more to read, forgotten here (read them this pass)."""
        again, self._read_again = self._read_again, set()
        return again

    def mark_read(self, run_id: str) -> None:
        """The run's progress may have changed: compare it at the next flush."""
        self._progress_read.add(run_id)

    def runs_touched(self, paths: Iterable[Path]) -> set[str]:
        """The tracked runs whose directory holds one of these paths."""
        touched: set[str] = set()
        # String prefix, not Path.relative_to: 0.3 us a path instead of 3.6 (hundreds a pass).
        prefix = str(self._s.settings.runs_dir).rstrip(os.sep) + os.sep
        cut = len(prefix)
        for path in paths:
            text = str(path)
            if text.startswith(prefix):
                first = text[cut:].partition(os.sep)[0]
                if first in self._runs:
                    touched.add(first)
        return touched

    def read_progress(self, run_ids: Iterable[str]) -> None:
        """Read both tails of these runs."""
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is not None:
                self.read_tail(run)

    def read_output(self, run_ids: Iterable[str]) -> None:
        """Read the output tails of these runs (those with progress_patterns)."""
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is not None and run.output is not None:
                self._progress_read.add(run_id)
                for record in run.output.read():
                    run.progress = run.progress.fold(record)
                if run.output.more:
                    self._read_again.add(run_id)

    def read_tail(self, run: TrackedRun, *, to_end: bool = False) -> None:
        """Read the run's tails: one read each, or (`to_end`) all there is."""
        self._progress_read.add(run.run_id)
        for record in run.tail.read_to_end() if to_end else run.tail.read():
            run.progress = run.progress.fold(record)
        if run.output is not None:
            for record in run.output.read_to_end() if to_end else run.output.read():
                run.progress = run.progress.fold(record)
        if run.tail.more or (run.output is not None and run.output.more):
            self._read_again.add(run.run_id)  # a burst: go on next pass, without waiting

    def queue_progress(self) -> None:
        """Put the progress of runs read since the last flush into the outbox, if it changed."""
        # Only runs whose tail was read can have new progress: with 200 runs, comparing every
        # run on every pass (half the passes read nothing) cost ~2 % of a core (bench/ load).
        for run_id in self._progress_read:
            run = self._runs.get(run_id)
            if run is None:
                continue
            update = run.progress_update()
            if update != run.flushed:
                self._s.outbox.progress(update)
                run.flushed = update
        self._progress_read.clear()

    def bound_logs(self, run_ids: Iterable[str], *, skip_small: bool = False) -> None:
        """Cut the logs of these runs that passed max_log_bytes. `skip_small`: trust an output
        tail's offset to show a log still far below the cap (no stat; the rescan checks all)."""
        far_below = self._s.settings.max_log_bytes - MAX_READ_BYTES
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is None or (skip_small and run.output and run.output.offset < far_below):
                continue
            if self.bound_log(run.run_dir, run.executor) and run.output is not None:
                self.read_tail(run)  # the output tail finds its place again; saved this pass

    def bound_log(self, run_dir: Path, executor: str) -> bool:
        """Cut the middle of the run's log once it is past max_log_bytes (see logcap); True if
        it was cut. Only logs this machine writes: a cluster job's log on a shared filesystem
        is written on another node, where a copy-and-truncate from here would cut it under its
        writer (NUL holes, a cut at every rescan); the cluster bounds its own (issue 20, 13)."""
        if executor != LOCAL_EXECUTOR:
            return False
        try:
            cut = logcap.bound_log(rundir.log_path(run_dir), self._s.settings.max_log_bytes)
        except OSError as exc:
            log.warning("log_cut_failed", run_dir=str(run_dir), error=str(exc))
            return False
        if cut.removed:
            log.info(
                "log_cut",
                run_dir=str(run_dir),
                removed_bytes=cut.removed,
                size_after=cut.size_after,
                method=cut.method,
            )
        return bool(cut.removed)

    def checkpoint_if_large(self) -> None:
        """Checkpoint the database's WAL once it passed wal_checkpoint_bytes."""
        settings = self._s.settings
        path = settings.database_path
        if path is None:
            return
        try:
            size = os.stat(f"{path}-wal").st_size
        except OSError:
            return
        if size <= settings.wal_checkpoint_bytes:
            return
        if self._s.store.checkpoint():
            log.info("wal_checkpointed", wal_bytes_before=size)
        else:  # a reader holds an old snapshot: again at the next rescan
            log.debug("wal_checkpoint_deferred", wal_bytes=size)
