"""Handles on runs: a run, a fixed group of runs, a sweep. Each is only ids and its client."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.cli.views import progress_fraction
from supervisor.client.errors import ResultsError, RunFailed
from supervisor.client.logs import log_lines
from supervisor.db import NewRun, RunRecord
from supervisor.results import ResultsProblem, read_results_file
from supervisor.states import FINAL_STATUSES, RunStatus

if TYPE_CHECKING:
    from supervisor.client.session import Session

Row = dict[str, Any]


@dataclass(frozen=True)
class RunChange:
    """What watch() yields: a run's status or progress as it is now, and its status before
    (None the first time the run is seen)."""

    run_id: str
    name: str | None
    status: str
    previous_status: str | None
    fraction: float | None  # overall progress in [0, 1], when the run reports it
    current_erlang: float | None
    current_iteration: int | None
    total_iterations: int | None
    error_message: str | None

    @property
    def is_final(self) -> bool:
        """True once the run has ended."""
        return self.status in FINAL_STATUSES

    @classmethod
    def of(cls, record: RunRecord, previous: str | None) -> RunChange:
        """The change a row shows."""
        return cls(
            record.id,
            record.name,
            record.status,
            previous,
            progress_fraction(record),
            record.current_erlang,
            record.current_iteration,
            record.total_iterations,
            record.error_message,
        )

    def key(self) -> tuple[object, ...]:
        """What must differ for watch() to yield again."""
        return (self.status, self.fraction, self.current_erlang, self.current_iteration)


class Run:
    """One run: its id, and its row as last read (`refresh()` reads it again)."""

    def __init__(self, client: Session, run_id: str, record: RunRecord | None = None) -> None:
        self.client = client
        self.id = run_id
        self._record = record if record is not None else client.store.get(run_id)

    def __repr__(self) -> str:
        return f"<Run {self.id} {self._record.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> RunRecord:
        """The run's row as last read."""
        return self._record

    @property
    def status(self) -> str:
        """Its status as last read: PENDING, RUNNING, COMPLETED, FAILED or CANCELLED."""
        return self._record.status

    @property
    def name(self) -> str | None:
        """Its name."""
        return self._record.name

    @property
    def sweep_id(self) -> str | None:
        """The sweep it belongs to, if any."""
        return self._record.sweep_id

    @property
    def config(self) -> dict[str, Any]:
        """Its config object."""
        value = json.loads(self._record.config_json)
        return value if isinstance(value, dict) else {}

    @property
    def is_final(self) -> bool:
        """True once it has ended (as last read)."""
        return self._record.is_final

    def refresh(self) -> Run:
        """Read the run's row again; returns the handle."""
        self._record = self.client.store.get(self.id)
        return self

    def cancel(self) -> bool:
        """Ask for a cancel (the daemon carries it out); False if it had ended or was asked."""
        self._record, asked = self.client.store.request_cancel(self.id)
        return asked

    def wait(self, timeout: float | None = None) -> str:
        """Wait until the run has ended; its final status. WaitTimeout after `timeout` s."""
        self._record = self.client.wait_for(
            lambda: self.client.store.get(self.id),
            lambda r: r.is_final,
            timeout,
            f"run {self.id}",
        )
        return self._record.status

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Its results object as the simulation wrote it (waiting for the run to end first).

        RunFailed if it ended other than COMPLETED; ResultsError if it completed without a
        usable results file.
        """
        status = self.wait(timeout)
        if status != RunStatus.COMPLETED.value:
            raise RunFailed(self.id, status, self._record.error_message)
        path = self.client.results_path(self._record)
        if path is None:
            raise ResultsError(f"run {self.id} COMPLETED but has no run directory")
        try:
            value = read_results_file(path)
        except ResultsProblem as exc:
            raise ResultsError(f"run {self.id}: {exc}") from None
        if value is None:
            raise ResultsError(f"run {self.id} COMPLETED but wrote no {path.name} ({path})")
        return value

    def logs(self, follow: bool = False) -> Iterator[str]:
        """Its log's lines (stdout and stderr); with `follow`, more as they come, until it ends."""
        return log_lines(self.client, self.id, follow=follow)

    def watch(self, timeout: float | None = None) -> Iterator[RunChange]:
        """Its status and progress changes until it has ended (see Runs.watch)."""
        return Runs(self.client, [self.id]).watch(timeout)


class Runs:
    """A group of runs: wait for them, watch them, gather their results, resubmit them."""

    def __init__(self, client: Session, run_ids: Sequence[str]) -> None:
        self.client = client
        self._ids = list(dict.fromkeys(run_ids))

    def __repr__(self) -> str:
        return f"<Runs of {len(self._ids)}>"

    @property
    def ids(self) -> list[str]:
        """The run ids, in order."""
        return list(self._ids)

    def records(self) -> list[RunRecord]:
        """The runs' rows now."""
        return self.client.store.get_many(self._ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs())

    def runs(self) -> list[Run]:
        """A handle for each run, read now."""
        return [Run(self.client, r.id, r) for r in self.records()]

    def statuses(self) -> dict[str, int]:
        """How many runs have each status now."""
        return dict(Counter(r.status for r in self.records()))

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Wait until every run has ended; how many ended with each status."""
        records = self.client.wait_for(
            self.records, lambda rs: all(r.is_final for r in rs), timeout, repr(self)
        )
        return dict(Counter(r.status for r in records))

    def watch(self, timeout: float | None = None) -> Iterator[RunChange]:
        """Each run's state when first seen, then each change of a status or of progress, until
        every run has ended (woken by the database's change counter, not a fixed sleep)."""
        seen: dict[str, RunChange] = {}
        for records, _done in self.client.follow(
            self.records, lambda rs: all(r.is_final for r in rs), timeout, repr(self)
        ):
            for record in records:
                before = seen.get(record.id)
                change = RunChange.of(record, before.status if before else None)
                if before is None or change.key() != before.key():
                    seen[record.id] = change
                    yield change

    def results(self, status: str | None = None) -> list[Row]:
        """One row a run, as `runsup results --json` gives them (SPEC section 15): id, name,
        status, attempt, duration_seconds, config.<key> for the keys that differ, results.<key>.
        A run whose results file cannot be used gets empty cells and a ResultsWarning."""
        records = [r for r in self.records() if status is None or r.status == status.upper()]
        return self.client.table(records).rows

    def plot(
        self, x: str, y: str, out: str | os.PathLike[str] = "results.png", status: str | None = None
    ) -> Path:
        """Draw column `y` of results() against column `x` into the PNG `out`, one line for each
        value of the other differing config keys (as `runsup results --plot X:Y`); needs the
        `plot` extra (matplotlib). Returns the file's path."""
        from supervisor.plot import plot_results

        records = [r for r in self.records() if status is None or r.status == status.upper()]
        table = self.client.table(records)
        return plot_results(table, f"{x}:{y}", Path(out))[0]

    def failed(self) -> Runs:
        """The runs that FAILED, leaving out any whose config was submitted again since (in
        this group) so that resubmitting twice does not run a point twice."""
        latest: dict[tuple[str, str], RunRecord] = {}
        for record in sorted(self.records(), key=_submitted_order):
            latest[(record.template, _canonical(record.config_json))] = record
        chosen = {r.id for r in latest.values() if r.status == RunStatus.FAILED.value}
        return Runs(self.client, [i for i in self.ids if i in chosen])

    def resubmit(self) -> Runs:
        """Queue each run again as a new PENDING run (same template, config, name, priority
        and sweep), in one transaction for each sweep; a handle on the new runs."""
        by_sweep: dict[str | None, list[RunRecord]] = {}
        for record in self.records():
            by_sweep.setdefault(record.sweep_id, []).append(record)
        new_ids: list[str] = []
        for sweep_id, records in by_sweep.items():
            new = [NewRun(r.template, r.config_json, r.name, r.priority) for r in records]
            new_ids += [r.id for r in self.client.store.submit(new, sweep_id=sweep_id)]
        return Runs(self.client, new_ids)

    def cancel(self) -> int:
        """Ask for a cancel of every run still waiting or running; how many were asked."""
        return sum(1 for i in self.ids if self.client.store.request_cancel(i)[1])


class Sweep(Runs):
    """The runs that share a sweep id, read again each time (runs resubmitted into it join)."""

    def __init__(self, client: Session, sweep_id: str) -> None:
        super().__init__(client, [])
        self.id = sweep_id

    def __repr__(self) -> str:
        return f"<Sweep {self.id}>"

    @property
    def ids(self) -> list[str]:
        """The ids of the sweep's runs now, oldest first."""
        return [r.id for r in self.records()]

    def records(self) -> list[RunRecord]:
        """The sweep's rows now, oldest first."""
        return self.client.store.sweep_runs(self.id)


def _submitted_order(record: RunRecord) -> str:
    return record.created_at.isoformat() if record.created_at is not None else ""


def _canonical(config_json: str) -> str:
    try:
        return json.dumps(json.loads(config_json), sort_keys=True)
    except (ValueError, RecursionError):
        return config_json
