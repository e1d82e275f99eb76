"""`runsup check`: validate the configuration and this machine; try patterns on a log.

The command line only parses arguments and calls `check_setup` or `check_sample_log`; both
return a report to print as text or JSON, and raise SupervisorError for what the user can get
wrong. The machine checks themselves live in `supervisor.checks`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from supervisor.checks import CheckResult, Status, exit_code, run_checks
from supervisor.errors import ValidationError
from supervisor.progress.jsonl import ProgressRecord, ProgressState
from supervisor.settings import (
    DEFAULT_TEMPLATE_CPUS,
    LOCAL_EXECUTOR,
    SIZE_UNITS,
    Settings,
    Template,
)

READ_CHUNK_BYTES: Final = 1024 * 1024
"""The sample log is read in pieces of this size: a huge log or line never sits in memory."""
SHOWN_LINE_CHARS: Final = 60
"""A matching line is shown cut to this many characters in the table for people."""
STATUS_STYLES: Final = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}
"""How each outcome looks in the table (colour only on a terminal)."""


def check_config(settings: Settings) -> dict[str, Any]:
    """What the loaded configuration holds (loading it already validated it)."""
    return {
        "config_file": str(settings.config_file) if settings.config_file else None,
        "database": settings.database,
        "runs_dir": str(settings.runs_dir),
        "templates": {name: _template_json(t) for name, t in sorted(settings.templates.items())},
    }


def _template_json(template: Template) -> dict[str, Any]:
    return {
        "command": list(template.command),
        "config_format": template.config_format,
        "progress_patterns": list(template.progress_patterns),
        "executor": template.executor,
        "cpus": template.cpus,
        "gpus": template.gpus,
        "memory_max_bytes": template.memory_max,
    }


def _template_asks(t: dict[str, Any]) -> str:
    """', on cluster, 4 cpus, 1 gpu, memory_max 8G': where and what, when not the defaults."""
    parts = []
    if t["cpus"] != DEFAULT_TEMPLATE_CPUS:
        parts.append(f"{t['cpus']} cpus")
    if t["gpus"] is not None:
        parts.append(f"{t['gpus']} gpu{'s' if t['gpus'] != 1 else ''}")
    if t["memory_max_bytes"] is not None:
        parts.append(f"memory_max {_size(t['memory_max_bytes'])}")
    if t["executor"] != LOCAL_EXECUTOR:
        parts.insert(0, f"on {t['executor']}")
    return "".join(f", {p}" for p in parts)


def config_text(report: dict[str, Any]) -> str:
    """`check_config`'s report for people."""
    lines = ["configuration OK"]
    lines.append(f"  config file: {report['config_file'] or '(none: defaults)'}")
    lines.append(f"  database:    {report['database']}")
    lines.append(f"  runs_dir:    {report['runs_dir']}")
    lines.append("templates:")
    for name, t in report["templates"].items():
        patterns = len(t["progress_patterns"])
        extra = f", {patterns} progress pattern{'s' if patterns != 1 else ''}" if patterns else ""
        lines.append(
            f"  {name}: {' '.join(t['command'])} ({t['config_format']}{extra}){_template_asks(t)}"
        )
    return "\n".join(lines)


def _size(size: int) -> str:
    """Bytes as the configuration would write them: 8G, 512M, 1000."""
    for unit in ("T", "G", "M", "K"):
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


@dataclass(frozen=True)
class SetupReport:
    """Plain `runsup check`: the configuration and every check of this machine."""

    config: dict[str, Any]
    results: list[CheckResult]

    @property
    def exit_code(self) -> int:
        """0 when everything a template needs is here (warnings allowed), else 1."""
        return exit_code(self.results)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready object: the configuration's keys, `checks` and `ok`."""
        return {
            **self.config,
            "checks": [r.to_json() for r in self.results],
            "ok": self.exit_code == 0,
        }


def check_setup(settings: Settings) -> SetupReport:
    """The configuration and what this machine offers and lacks for it."""
    return SetupReport(check_config(settings), run_checks(settings))


def setup_text(report: SetupReport, *, terminal: bool | None = None) -> str:
    """The report for people: the configuration, a table of the checks, a verdict. Colour
    and width follow stdout unless `terminal` says."""
    import io
    import shutil
    import sys

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    table.add_column("CHECK", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("DETAIL", overflow="fold")  # long paths are folded, never cut
    for r in report.results:
        detail = Text(r.detail)
        if r.fix and r.status is not Status.OK:
            detail.append(f"\nfix: {r.fix}", style="dim")
        table.add_row(r.name, Text(str(r.status), style=STATUS_STYLES[r.status]), detail)
    out = io.StringIO()
    console = Console(
        file=out,
        force_terminal=sys.stdout.isatty() if terminal is None else terminal,
        width=shutil.get_terminal_size().columns,
        markup=False,
        highlight=False,
    )
    console.print(table)
    rendered = "\n".join(line.rstrip() for line in out.getvalue().strip("\n").splitlines())
    return f"{config_text(report.config)}\n\n{rendered}\n{_verdict(report.results)}"


def _verdict(results: list[CheckResult]) -> str:
    failed = [r.name for r in results if r.status is Status.FAIL]
    warned = sum(1 for r in results if r.status is Status.WARN)
    also = f" ({warned} warning{'s' if warned != 1 else ''})" if warned else ""
    if failed:
        return f"NOT READY: {len(failed)} failed check(s): {', '.join(failed)}{also}"
    return f"ready{also}"


@dataclass
class SampleReport:
    """What a template's patterns make of a saved log."""

    template: str
    lines: int = 0
    matches: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    long_lines: int = 0
    unterminated_last_line: bool = False
    state: ProgressState = field(default_factory=ProgressState)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready object."""
        return {
            "template": self.template,
            "lines": self.lines,
            "matches": self.matches,
            "bad_lines": self.bad_lines,
            "long_lines": self.long_lines,
            "unterminated_last_line": self.unterminated_last_line,
            "final": _state_json(self.state),
        }


def check_sample_log(settings: Settings, template_name: str, log: Path) -> SampleReport:
    """Run a template's progress patterns over a saved log as the daemon would."""
    from supervisor.progress.patterns import MAX_LINE_BYTES, compile_patterns

    template = settings.templates.get(template_name)
    if template is None:
        known = ", ".join(sorted(settings.templates))
        raise ValidationError(f"unknown template {template_name!r} (known: {known})")
    if not template.progress_patterns:
        raise ValidationError(f"template {template_name!r} has no progress_patterns")
    patterns = compile_patterns(template.progress_patterns)
    report = SampleReport(template=template_name)
    try:
        with log.open("rb") as fh:
            for number, line in _lines(fh, MAX_LINE_BYTES, report):
                report.lines = number
                if line is None:
                    report.long_lines += 1
                    continue
                result = patterns.match(line)
                if result.problem is not None:
                    report.bad_lines += 1
                    report.matches.append(_shown(number, line, problem=result.problem))
                elif result.records:
                    for rec in result.records:
                        report.state = report.state.fold(rec)
                    report.matches.append(_shown(number, line, records=result.records))
    except OSError as exc:
        raise ValidationError(f"--sample-log {log}: cannot read it: {exc.strerror}") from None
    return report


def _lines(fh: BinaryIO, max_line: int, report: SampleReport) -> Iterator[tuple[int, bytes | None]]:
    """(number, line) of each complete line; None for a line longer than max_line."""
    number = 0
    pending = b""
    too_long = False
    while chunk := fh.read(READ_CHUNK_BYTES):
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            number += 1
            line = pending + part
            yield number, None if too_long or len(line) > max_line else line
            pending, too_long = b"", False
        if not too_long:
            pending += parts[-1]
            if len(pending) > max_line:
                pending, too_long = b"", True
    # Like the daemon: a last line without its newline is not read.
    report.unterminated_last_line = bool(pending) or too_long


def _shown(
    number: int,
    line: bytes,
    *,
    records: tuple[ProgressRecord, ...] = (),
    problem: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"line": number, "text": line.decode("utf-8", "replace")}
    if problem is not None:
        out["skipped"] = problem
    else:
        out["progress"] = [_record_json(r) for r in records]
    return out


def _record_json(rec: ProgressRecord) -> dict[str, Any]:
    fields = {
        "type": rec.type,
        "erlang": rec.erlang,
        "erlang_index": rec.erlang_index,
        "total_erlangs": rec.total_erlangs,
        "iteration": rec.iteration,
        "total_iterations": rec.total_iterations,
        "message": rec.message,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _state_json(state: ProgressState) -> dict[str, Any]:
    return {
        "current_erlang": state.current_erlang,
        "erlang_index": state.erlang_index,
        "total_erlangs": state.total_erlangs,
        "current_iteration": state.current_iteration,
        "total_iterations": state.total_iterations,
        "last_error": state.last_error,
    }


def sample_text(report: SampleReport) -> str:
    """`check_sample_log`'s report for people: each matching line, what it gives, the end."""
    out = [f"template {report.template}: {report.lines} lines read"]
    for m in report.matches:
        what = m.get("skipped") or "; ".join(_fields_text(r) for r in m["progress"])
        if "skipped" in m:
            what = f"skipped: {what}"
        text = m["text"]
        shown = text if len(text) <= SHOWN_LINE_CHARS else text[: SHOWN_LINE_CHARS - 3] + "..."
        out.append(f"{m['line']:>7}: {what}\n         | {shown}")
    if not report.matches:
        out.append("no line matched a progress pattern")
    matched = sum(1 for m in report.matches if "progress" in m)
    out.append(
        f"{matched} lines gave progress, {report.bad_lines} skipped (not a number), "
        f"{report.long_lines} skipped (longer than 64 KiB)"
    )
    if report.unterminated_last_line:
        out.append("the last line has no newline: the daemon would not read it yet")
    out.append(f"final progress: {_state_text(report.state)}")
    return "\n".join(out)


def _fields_text(rec: dict[str, Any]) -> str:
    kind = rec.get("type")
    fields = " ".join(f"{k}={v}" for k, v in rec.items() if k != "type")
    return f"{kind}: {fields}" if kind else fields


def _state_text(state: ProgressState) -> str:
    parts = []
    if state.current_erlang is not None or state.erlang_index is not None:
        load = f"load {_of(state.erlang_index + 1 if state.erlang_index is not None else None)}"
        load += f"/{_of(state.total_erlangs)}"
        erl = f" ({state.current_erlang} Erlang)" if state.current_erlang is not None else ""
        parts.append(load + erl)
    if state.current_iteration is not None or state.total_iterations is not None:
        parts.append(f"iteration {_of(state.current_iteration)}/{_of(state.total_iterations)}")
    if state.last_error is not None:
        parts.append(f"last error: {state.last_error}")
    return ", ".join(parts) if parts else "none"


def _of(value: object) -> str:
    return "?" if value is None else str(value)
