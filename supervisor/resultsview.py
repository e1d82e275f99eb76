"""`runsup results`, `runsup resubmit --sweep ID --failed` and the bounded `runsup list`: what
they select and how they print it. The command line (supervisor.cli) only parses arguments.

They go through the Python client (supervisor.client), so `runsup results --json` and
`Sweep.results()` give the same rows, and `resubmit --failed` is `sweep.failed().resubmit()`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from supervisor.cli.views import table
from supervisor.client import Client
from supervisor.db import RunRecord
from supervisor.errors import NotFoundError, ValidationError
from supervisor.results import TABLE_CELL_WIDTH, ResultsTable, cell_text
from supervisor.settings import Settings
from supervisor.states import RunStatus

# `runsup results` without ids, --sweep or --all: the runs made last (as `list` bounds itself).
DEFAULT_RESULTS_LIMIT = 20


def check_status(status: str | None) -> str | None:
    """A status as stored (upper case); ValidationError for one that does not exist."""
    if status is None:
        return None
    upper = status.upper()
    if upper not in RunStatus.__members__:
        raise ValidationError(
            f"unknown status {status!r} (one of {', '.join(RunStatus.__members__)})"
        )
    return upper


def select_runs(
    client: Client,
    run_ids: Sequence[str],
    sweep_id: str | None,
    status: str | None,
    limit: int | None,
) -> tuple[list[RunRecord], int]:
    """The runs `results` shows, and how many more it could have shown (without ids/sweep)."""
    store = client.store
    if run_ids and sweep_id is not None:
        raise ValidationError("name run IDs or --sweep ID, not both")
    if run_ids:
        records = store.get_many(run_ids)
        missing = [i for i in dict.fromkeys(run_ids) if i not in {r.id for r in records}]
        if missing:
            raise NotFoundError(f"no run with id {', '.join(missing)}")
        return [r for r in records if status is None or r.status == status], 0
    if sweep_id is not None:
        records = store.sweep_runs(sweep_id, status)
        if not records and not store.sweep_runs(sweep_id):
            raise NotFoundError(f"no sweep with id {sweep_id!r}")
        return records, 0
    newest, more = store.recent_runs(limit or DEFAULT_RESULTS_LIMIT, status)
    return list(reversed(newest)), more


def render_table(result: ResultsTable) -> str:
    """The table for people: one line a run, long cells cut (the whole value is in --csv)."""
    rows = [
        [cell_text(row.get(c), TABLE_CELL_WIDTH) for c in result.columns] for row in result.rows
    ]
    return table(result.columns, rows)


def render_csv(result: ResultsTable) -> str:
    """CSV with a header line of the column names; empty cells for nothing."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow([cell_text(row.get(c)) for c in result.columns])
    return buffer.getvalue()


def render_json(result: ResultsTable) -> str:
    """A JSON list, one object a run, its keys the column names (every column in each)."""
    rows = [{c: _finite(row.get(c)) for c in result.columns} for row in result.rows]
    return json.dumps(rows, indent=2, allow_nan=False, default=str)


def _finite(value: object) -> object:
    """NaN and infinities (Python's json reads them from a results file) as null: JSON has no
    word for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def print_results(
    settings: Settings,
    run_ids: Sequence[str],
    sweep_id: str | None,
    status: str | None,
    fmt: str,
    *,
    plot: str | None = None,
    out: str | None = None,
    limit: int | None = None,
    show_all: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Print (or plot) the results table; the exit code."""
    output = stdout if stdout is not None else sys.stdout
    errors = stderr if stderr is not None else sys.stderr
    wanted = check_status(status)
    with Client(settings=settings) as client:
        if show_all and not run_ids and sweep_id is None:
            records = client.store.recent_runs(sys.maxsize, wanted)[0][::-1]
            more = 0
        else:
            records, more = select_runs(client, run_ids, sweep_id, wanted, limit)
        result = client.table(records, warn=False)
    for note in result.notes:
        errors.write(f"runsup: {note}\n")
    if plot is not None:
        from supervisor.plot import DEFAULT_PLOT_FILE, plot_results

        path, count = plot_results(result, plot, Path(out or DEFAULT_PLOT_FILE))
        output.write(f"{path}: {count} runs plotted\n")
        return 0
    if fmt == "json":
        output.write(render_json(result) + "\n")
    elif fmt == "csv":
        output.write(render_csv(result))
    elif result.rows:
        output.write(render_table(result) + "\n")
    else:
        output.write("no runs\n")
    if more:
        errors.write(
            f"runsup: {more} older runs not shown (name run IDs, --sweep ID, --limit N or --all)\n"
        )
    return 0


def resubmit_failed(
    settings: Settings, sweep_id: str, as_json: bool, stderr: TextIO | None = None
) -> list[str]:
    """`runsup resubmit --sweep ID --failed`: the new run ids (the lines to print)."""
    with Client(settings=settings) as client:
        sweep = client.sweep_of(sweep_id)
        again = sweep.failed().resubmit()
        records = again.records()
    if not records:
        (stderr if stderr is not None else sys.stderr).write(
            f"runsup: sweep {sweep_id}: no failed runs to resubmit (a point resubmitted "
            "already counts by its newest run)\n"
        )
    if as_json:
        return [json.dumps([r.to_json() for r in records], indent=2, sort_keys=True)]
    return [r.id for r in records]
