"""`runsup watch`: live progress of runs, read from the database until they end.

What is watched:

* `runsup watch ID`: that run, from whatever state it is in until it is final.
* `runsup watch`: every run that is PENDING or RUNNING when the command starts, plus every run
  that becomes PENDING or RUNNING while it watches (a run submitted meanwhile joins the view).
  It ends when all of them are final. With nothing pending or running it says so and ends.

The view refreshes from the database every WATCH_INTERVAL_SECONDS; nothing is written and no
daemon is needed (a PENDING run simply waits, shown as queued, until a daemon starts it).

On a terminal (also over SSH) it draws a table of progress bars that is redrawn in place, with
rich, imported only here. When stdout is not a terminal (a pipe, a file, `TERM=dumb`) it prints
plain lines instead: one line per run each time its status, load, iteration or percent changes,
without control codes, flushed at once so that `runsup watch | tee` shows them live.

Rate and ETA are averages since the run started: iterations done (from the overall fraction)
over the time it has run, and the remaining fraction at that pace.

Exit status: 0 when every watched run COMPLETED, 1 when any of them FAILED or was CANCELLED,
130 on Ctrl-C (only the watching stops; the runs go on).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TextIO

from supervisor.cli.views import (
    format_duration,
    outcome_summary,
    pause_lines,
    progress_fraction,
    run_duration,
)
from supervisor.db import RunRecord, Store, utcnow
from supervisor.states import FINAL_STATUSES, RunStatus

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text

# How often the database is read again.
WATCH_INTERVAL_SECONDS = 0.5
# A rate is shown once the run has been running at least this long (earlier it is noise).
MIN_RATE_ELAPSED_SECONDS = 1.0
# Longest name shown in the live table (the full name is in `runsup show`).
NAME_WIDTH = 18
# Longest account of how a run ended (the whole message is in `runsup show`).
NOTE_WIDTH = 80
NARROW_NAME_WIDTH = 14
BAR_WIDTH = 22
# From this many columns on, one line a run; below, two.
WIDE_TERMINAL_COLUMNS = 110
# TERM values that cannot redraw in place.
DUMB_TERMINALS = frozenset({"", "dumb", "unknown"})

EXIT_ALL_COMPLETED = 0
EXIT_SOME_NOT_COMPLETED = 1
EXIT_STOPPED = 2  # the caller's keep_going() said stop (the demo: its daemon died)
EXIT_INTERRUPTED = 130

STATUS_STYLES = {
    RunStatus.PENDING.value: "yellow",
    RunStatus.RUNNING.value: "cyan",
    RunStatus.COMPLETED.value: "green",
    RunStatus.FAILED.value: "bold red",
    RunStatus.CANCELLED.value: "magenta",
}


@dataclass(frozen=True)
class RunView:
    """One run as the watch shows it: plain strings, computed from a row and the time."""

    run_id: str
    name: str
    status: str
    fraction: float | None
    load: str
    iteration: str
    rate: str
    eta: str
    note: str

    @property
    def percent(self) -> str:
        """'42%' or '-'."""
        return "-" if self.fraction is None else f"{self.fraction * 100:.0f}%"

    def change_key(self) -> tuple[str, str, str, str, str]:
        """What must change for the plain view to print a new line (rate and ETA do not)."""
        return (self.status, self.percent, self.load, self.iteration, self.note)

    def plain_line(self, now: datetime) -> str:
        """One line for a pipe or a log file."""
        parts = [now.strftime("%H:%M:%S"), self.run_id]
        if self.name:
            parts.append(self.name)
        parts += [self.status, self.percent]
        if self.load != "-":
            parts.append(f"load {self.load}")
        if self.iteration != "-":
            parts.append(f"iteration {self.iteration}")
        if self.rate:
            parts.append(self.rate)
        if self.eta:
            parts.append(f"ETA {self.eta}")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)


def run_view(run: RunRecord, now: datetime) -> RunView:
    """What the watch shows of `run` at `now`."""
    fraction = progress_fraction(run)
    load = "-"
    if run.current_erlang is not None:
        load = f"{run.current_erlang:g}"
        if run.total_erlangs:
            load += f" ({(run.erlang_index or 0) + 1}/{run.total_erlangs})"
    iteration = "-"
    if run.total_iterations:
        iteration = f"{run.current_iteration or 0}/{run.total_iterations}"
    rate, eta = "", ""
    if run.status == RunStatus.RUNNING.value:
        rate, eta = _rate_and_eta(run, fraction, now)
    return RunView(
        run_id=run.id,
        name=run.name or "",
        status=run.status,
        fraction=fraction,
        load=load,
        iteration=iteration,
        rate=rate,
        eta=eta,
        note=_note(run, now),
    )


def _rate_and_eta(run: RunRecord, fraction: float | None, now: datetime) -> tuple[str, str]:
    elapsed = run_duration(run, now)
    if fraction is None or not fraction or elapsed is None or elapsed < MIN_RATE_ELAPSED_SECONDS:
        return "", ""
    eta = format_duration(elapsed * (1 - fraction) / fraction)
    if run.total_iterations:
        steps = fraction * run.total_iterations * (run.total_erlangs or 1)
        return f"{steps / elapsed:.1f} it/s", eta
    return "", eta


def _note(run: RunRecord, now: datetime) -> str:
    status = run.status
    if status == RunStatus.PENDING.value:
        return "cancel asked" if run.cancel_requested_at else "queued"
    if status == RunStatus.RUNNING.value:
        if run.cancel_requested_at:
            return "cancelling"
        return "" if run.total_iterations else "starting"
    took = format_duration(run_duration(run, now))
    if status == RunStatus.COMPLETED.value:
        return f"in {took}"
    reason = outcome_summary(run, NOTE_WIDTH)
    return reason if run.started_at is None else f"after {took}: {reason}"


# ------------------------------------------------------------- which runs


class _Selection:
    """The runs being watched, in the order they were first seen."""

    def __init__(self, ids: Iterable[str], follow_new: bool) -> None:
        self.ids: list[str] = list(dict.fromkeys(ids))
        self.follow_new = follow_new

    def poll(self, store: Store) -> list[RunRecord]:
        if self.follow_new:
            for run in _live_runs(store):
                if run.id not in self.ids:
                    self.ids.append(run.id)
        by_id = {r.id: r for r in store.get_many(self.ids)}
        return [by_id[i] for i in self.ids if i in by_id]


def _live_runs(store: Store) -> list[RunRecord]:
    """PENDING and RUNNING runs, oldest first."""
    runs = store.list_runs(RunStatus.RUNNING.value) + store.list_runs(RunStatus.PENDING.value)
    return sorted(runs, key=lambda r: (r.created_at or utcnow(), r.id))


# ------------------------------------------------------------- displays


class _Display(Protocol):
    notice: str

    def update(self, views: Sequence[RunView], now: datetime) -> None: ...

    def close(self) -> None: ...


class _PlainDisplay:
    """One line per change; nothing a pipe or a log file cannot hold."""

    def __init__(self, out: TextIO, header: str) -> None:
        self.out = out
        self.seen: dict[str, tuple[str, str, str, str, str]] = {}
        self.last: Sequence[RunView] = ()
        self.notice = ""  # the queue's pauses, set before each update
        self._notice_shown = ""
        self._write(header)

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def update(self, views: Sequence[RunView], now: datetime) -> None:
        if self.notice != self._notice_shown:
            self._notice_shown = self.notice
            self._write(self.notice or "resumed: nothing in the queue is paused")
        for view in views:
            key = view.change_key()
            if self.seen.get(view.run_id) != key:
                self.seen[view.run_id] = key
                self._write(view.plain_line(now))
        self.last = views

    def close(self) -> None:
        if self.last and all(v.status in FINAL_STATUSES for v in self.last):
            counts = _count_statuses(self.last)
            summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
            plural = "s" if len(self.last) != 1 else ""
            self._write(f"{len(self.last)} run{plural} ended: {summary}")


class _JsonDisplay:
    """`watch --json`: one JSON object a line for each change, for scripts (JSON Lines)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, tuple[str, str, str, str, str]] = {}
        self.notice = ""  # the queue's pauses, set before each update
        self._notice_shown = ""

    def _write(self, value: dict[str, object]) -> None:
        self.out.write(json.dumps(value, sort_keys=True) + "\n")
        self.out.flush()

    def update(self, views: Sequence[RunView], now: datetime) -> None:
        at = now.isoformat()
        if self.notice != self._notice_shown:
            self._notice_shown = self.notice
            self._write({"at": at, "paused": [n for n in self.notice.splitlines() if n]})
        for view in views:
            key = view.change_key()
            if self.seen.get(view.run_id) != key:
                self.seen[view.run_id] = key
                self._write(
                    {
                        "at": at,
                        "id": view.run_id,
                        "name": view.name or None,
                        "status": view.status,
                        "progress": view.fraction,
                        "load": None if view.load == "-" else view.load,
                        "iteration": None if view.iteration == "-" else view.iteration,
                        "note": view.note or None,
                    }
                )

    def close(self) -> None:
        pass


class _LiveDisplay:
    """A table of progress bars redrawn in place (rich)."""

    def __init__(self, out: TextIO, header: str, interval: float) -> None:
        from rich.console import Console
        from rich.live import Live

        self.header = header
        self.notice = ""  # the queue's pauses, set before each update
        self.interval = interval
        self.console: Console = Console(file=out)
        # Redrawn only when the data is read again: nothing to gain from more, and less
        # traffic over a slow SSH link.
        self.live: Live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def update(self, views: Sequence[RunView], now: datetime) -> None:
        self.live.update(self._render(views, now), refresh=True)

    def _render(self, views: Sequence[RunView], now: datetime) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        if self.console.width >= WIDE_TERMINAL_COLUMNS:
            body: list[RenderableType] = [_wide_table(views)]
        else:
            body = _narrow_rows(views)
        counts = _count_statuses(views)
        summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
        footer = Text(
            f"{now.strftime('%H:%M:%S')} UTC  {summary}  ·  refreshed every {self.interval:g} s",
            style="dim",
        )
        top = [Text(self.header, style="bold")]
        if self.notice:
            top.append(Text(self.notice, style="yellow"))
        return Group(*top, *body, footer)

    def close(self) -> None:
        self.live.stop()


def _bar(view: RunView, width: int | None) -> RenderableType:
    from rich.progress_bar import ProgressBar

    # A running run that has not reported its totals yet: a pulsing bar.
    blind = view.status == RunStatus.RUNNING.value and view.fraction is None
    return ProgressBar(
        total=None if blind else 1.0,
        completed=view.fraction or 0.0,
        width=width,
        animation_time=time.monotonic(),
    )


def _status_text(view: RunView, *, with_note: bool) -> Text:
    from rich.text import Text

    text = Text(view.status, style=STATUS_STYLES.get(view.status, ""))
    if with_note and view.note:
        text.append(f" {view.note}", style="red" if view.status == "FAILED" else "dim")
    return text


def _wide_table(views: Sequence[RunView]) -> RenderableType:
    """One line a run, a column a field: for terminals of WIDE_TERMINAL_COLUMNS or more."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("RUN", no_wrap=True)
    table.add_column("NAME", no_wrap=True, max_width=NAME_WIDTH)
    table.add_column("PROGRESS", no_wrap=True)
    for column in ("%", "LOAD", "ITER", "RATE", "ETA"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("STATUS")
    for v in views:
        table.add_row(
            v.run_id,
            Text(_clip(v.name, NAME_WIDTH)),
            _bar(v, BAR_WIDTH),
            v.percent,
            v.load,
            v.iteration,
            v.rate,
            v.eta,
            _status_text(v, with_note=True),
        )
    return table


def _narrow_rows(views: Sequence[RunView]) -> list[RenderableType]:
    """Two lines a run (id, name, bar, percent, status; then the details): for 60-110 columns."""
    from rich.table import Table
    from rich.text import Text

    name_width = min(max((len(v.name) for v in views), default=0), NARROW_NAME_WIDTH)
    status_width = max((len(v.status) for v in views), default=0)
    out: list[RenderableType] = []
    for v in views:
        # One grid a run, every column but the bar of a fixed width: the bars line up.
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=len(v.run_id), no_wrap=True)
        if name_width:
            grid.add_column(width=name_width, no_wrap=True)
        grid.add_column(ratio=1, no_wrap=True)
        grid.add_column(width=4, justify="right", no_wrap=True)
        grid.add_column(width=status_width, no_wrap=True)
        cells: list[RenderableType] = [v.run_id]
        if name_width:
            cells.append(Text(_clip(v.name, name_width)))
        cells += [_bar(v, None), v.percent, _status_text(v, with_note=False)]
        grid.add_row(*cells)
        out.append(grid)
        details = [
            f"load {v.load}" if v.load != "-" else "",
            f"iteration {v.iteration}" if v.iteration != "-" else "",
            v.rate,
            f"ETA {v.eta}" if v.eta else "",
        ]
        line = Text(" " * (len(v.run_id) + 1) + "  ·  ".join(d for d in details if d))
        if v.note:
            sep = "  ·  " if any(details) else ""
            line.append(sep + v.note, style="red" if v.status == "FAILED" else "dim")
        out.append(line)
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _count_statuses(views: Sequence[RunView]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in RunStatus:
        n = sum(1 for v in views if v.status == status.value)
        if n:
            counts[status.value] = n
    return counts


def is_live_terminal(out: TextIO) -> bool:
    """True when `out` is a terminal that can redraw in place."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") not in DUMB_TERMINALS


# ------------------------------------------------------------- the loop


def watch_runs(
    store: Store,
    run_id: str | None,
    *,
    run_ids: Sequence[str] | None = None,
    interval: float = WATCH_INTERVAL_SECONDS,
    out: TextIO | None = None,
    live: bool | None = None,
    keep_going: Callable[[], bool] | None = None,
    header: str | None = None,
    as_json: bool = False,
) -> int:
    """Show the runs' progress until they end; returns the exit status (module docstring).

    `run_ids` watches exactly these runs (the demo's); `live` forces the terminal view on or
    off (default: on for a terminal); `as_json` prints JSON Lines instead; `keep_going`, asked
    once a refresh, stops the watch with EXIT_STOPPED when it returns False. Ctrl-C ends the
    watch with EXIT_INTERRUPTED.
    """
    stream = out if out is not None else sys.stdout
    if run_ids is not None:
        selection = _Selection(run_ids, follow_new=False)
    elif run_id is not None:
        selection = _Selection([store.get(run_id).id], follow_new=False)
    else:
        selection = _Selection([r.id for r in _live_runs(store)], follow_new=True)
        if not selection.ids:
            if not as_json:  # JSON Lines: no runs, no lines
                stream.write("no runs are pending or running\n")
            stream.flush()
            return EXIT_ALL_COMPLETED
    title = header or _default_header(len(selection.ids), run_id, selection.follow_new)
    use_live = is_live_terminal(stream) if live is None else live
    display: _Display
    if as_json:
        display = _JsonDisplay(stream)
    elif use_live:
        display = _LiveDisplay(stream, title, interval)
    else:
        display = _PlainDisplay(stream, title)
    try:
        code = _loop(store, selection, display, interval, keep_going)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        display.close()  # also on an error: a live display must give the cursor back
    if code == EXIT_INTERRUPTED:
        sys.stderr.write("stopped watching; the runs go on\n")
    return code


def _default_header(count: int, run_id: str | None, follow_new: bool) -> str:
    if run_id is not None:
        return f"watching run {run_id} until it ends (Ctrl-C: stop watching)"
    plural = "s" if count != 1 else ""
    more = ", and any that start," if follow_new else ""
    return f"watching {count} run{plural}{more} until all end (Ctrl-C: stop watching)"


def _loop(
    store: Store,
    selection: _Selection,
    display: _Display,
    interval: float,
    keep_going: Callable[[], bool] | None,
) -> int:
    while True:
        records = selection.poll(store)
        display.notice = "\n".join(pause_lines(store.pauses()))
        now = utcnow()
        display.update([run_view(r, now) for r in records], now)
        if all(r.is_final for r in records):
            done = all(r.status == RunStatus.COMPLETED.value for r in records)
            return EXIT_ALL_COMPLETED if done else EXIT_SOME_NOT_COMPLETED
        if keep_going is not None and not keep_going():
            return EXIT_STOPPED
        time.sleep(interval)
