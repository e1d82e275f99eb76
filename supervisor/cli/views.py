"""How runs look to people: tables, durations, progress percent, exit reasons (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from supervisor.db import QUEUE_ALL, Dependency, Pause, RunEvent, RunRecord, utcnow
from supervisor.hints import pause_hint
from supervisor.signames import signal_name
from supervisor.states import RunStatus


def progress_fraction(run: RunRecord) -> float | None:
    """Overall progress in [0, 1] across loads and iterations, or None when unknown."""
    if run.status == RunStatus.COMPLETED:
        return 1.0
    te, ti, it = run.total_erlangs, run.total_iterations, run.current_iteration
    if not ti or it is None:
        return None
    within = min(max(it, 0), ti) / ti
    if not te:
        return within
    index = run.erlang_index if run.erlang_index is not None else 0
    index = min(max(index, 0), te - 1)
    return (index + within) / te


def format_duration(seconds: float | None) -> str:
    """A compact duration: 45s, 12m03s, 3h07m, 2d04h."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def run_duration(run: RunRecord, now: datetime | None = None) -> float | None:
    """Seconds the run has been (or was) running."""
    if run.started_at is None:
        return None
    end = run.completed_at or now or utcnow()
    return (end - run.started_at).total_seconds()


def exit_reason(run: RunRecord) -> str:
    """A short words-only account of how the run ended (or '-')."""
    if run.exit_signal is not None:
        return f"killed by {signal_name(run.exit_signal)}"
    if run.exit_code is not None:
        return f"exit {run.exit_code}"
    if run.is_final and run.error_message:
        return run.error_message.splitlines()[0][:60]
    return "-"


def outcome_summary(run: RunRecord, width: int = 60) -> str:
    """How a final run ended, for one table cell: the first line of its error message when it
    has one (it names the code or signal and why), else exit_reason()."""
    message = (run.error_message or "").strip()
    if run.is_final and message:
        line = message.splitlines()[0]
        return line if len(line) <= width else line[: width - 1] + "…"
    return exit_reason(run)


def format_percent(fraction: float | None) -> str:
    """'42%' or '-'."""
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def format_time(value: datetime | None) -> str:
    """UTC time to the second, or '-'."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (works in any terminal, over SSH, and in a pipe)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def runs_table(runs: Sequence[RunRecord]) -> str:
    """The `runsup list` table."""
    now = utcnow()
    rows = [
        [
            r.id,
            (r.name or "-")[:30],
            r.template[:20],
            r.status,
            format_percent(progress_fraction(r)),
            format_time(r.created_at),
            format_duration(run_duration(r, now)),
            outcome_summary(r),
        ]
        for r in runs
    ]
    return table(["ID", "NAME", "TEMPLATE", "STATUS", "PROGRESS", "CREATED", "RAN", "EXIT"], rows)


def run_details(run: RunRecord, events: Sequence[RunEvent]) -> str:
    """The `runsup show` text: the run's fields, then its history."""
    # The same percent as `runsup list` (a COMPLETED run is 100 % even if it never reported).
    progress = format_percent(progress_fraction(run))
    if run.total_erlangs or run.total_iterations:
        progress = (
            f"{progress}  load {run.current_erlang} "
            f"({(run.erlang_index or 0) + 1}/{run.total_erlangs or '?'}), "
            f"iteration {run.current_iteration or 0}/{run.total_iterations or '?'}"
        )
    fields = [
        ("id", run.id),
        ("name", run.name or "-"),
        ("template", run.template),
        ("status", run.status),
        ("queue", queue_summary(run)),
        ("progress", progress),
        ("created", format_time(run.created_at)),
        ("started", format_time(run.started_at)),
        ("completed", format_time(run.completed_at)),
        ("ran for", format_duration(run_duration(run))),
        ("pid / pgid", f"{run.pid or '-'} / {run.pgid or '-'}"),
        ("exit", exit_reason(run)),
        ("cancel asked", format_time(run.cancel_requested_at)),
        ("run dir", run.run_dir or "-"),
        ("bad progress lines", str(run.progress_bad_lines or 0)),
        ("config", run.config_json),
    ]
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {v}" for k, v in fields]
    if run.error_message:
        lines.append(
            f"{'error'.ljust(width)}  " + run.error_message.replace("\n", "\n" + " " * (width + 2))
        )
    lines.append("")
    lines.append("history:")
    for e in events:
        lines.append(
            f"  {format_time(e.at)}  {(e.from_status or '-'):>9} -> {e.to_status:<9}"
            f"  {e.reason or ''}"
        )
    return "\n".join(lines)


def queue_summary(run: RunRecord) -> str:
    """Priority, attempt, not_before and sweep of a run, for `runsup show`."""
    attempt = shown_attempt(run)
    parts = [
        f"priority {run.priority or 0}",
        "not started yet" if attempt is None else f"attempt {attempt}",
    ]
    if run.not_before is not None:
        parts.append(f"not before {format_time(run.not_before)}")
    if run.sweep_id:
        parts.append(f"sweep {run.sweep_id}")
    return ", ".join(parts)


def shown_attempt(run: RunRecord) -> int | None:
    """The attempt a run is on as people read it: NULL in a row that started is its first."""
    if run.attempt is not None:
        return run.attempt
    return 1 if run.started_at is not None or run.status == RunStatus.RUNNING else None


def shown_json(run: RunRecord) -> dict[str, Any]:
    """A run's JSON with the values its text shows: priority NULL is 0 (SPEC section 3) and
    the attempt of a run that started is at least 1."""
    return {**run.to_json(), "priority": run.priority or 0, "attempt": shown_attempt(run)}


def pause_lines(pauses: Sequence[Pause]) -> list[str]:
    """One line per paused scope of the queue, for `runsup list` and `watch` (none if none)."""
    lines = []
    for p in pauses:
        what = "the whole queue" if p.scope == QUEUE_ALL else f"template {p.scope}"
        why = f": {p.reason}" if p.reason else ""
        since = format_time(p.paused_at)
        lines.append(f"paused: {what} since {since}{why} ({pause_hint(p.scope)})")
    return lines


def dependency_lines(deps: Sequence[Dependency]) -> list[str]:
    """The `runsup show` lines for what a run waits for."""
    if not deps:
        return []
    lines = ["", "depends on:"]
    for d in deps:
        lines.append(f"  {d.depends_on}  {d.kind:<8}  {d.status or 'no such run'}")
    return lines
