"""Runs' results as one table (SPEC section 15): a row a run, its differing parameters and what
its simulation wrote to its results file. Pure but for reading those files.

Columns: `id`, `name`, `status`, `attempt`, `duration_seconds`, then `config.<key>` for each
config key whose value differs between the runs shown, then `results.<key>` for each key of
any run's results; nested objects become dotted keys (`results.a.b`). A cell with nothing in
it is None. A results file that cannot be used (missing for a COMPLETED run, not JSON, not an
object, too large, a link or not a regular file) leaves that run's results cells empty and
gives a note that says why; nothing here raises for what a simulation wrote.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.db import RunRecord, utcnow
from supervisor.states import RunStatus

DEFAULT_RESULTS_FILE = "results.json"
# A results file past this is not read: one huge file must not stall or exhaust the reader.
MIB = 1024 * 1024
MAX_RESULTS_BYTES = 16 * MIB
BASE_COLUMNS = ("id", "name", "status", "attempt", "duration_seconds")
CONFIG_PREFIX = "config."
RESULTS_PREFIX = "results."
DURATION_DECIMALS = 3
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Row = dict[str, Any]


class ResultsProblem(Exception):
    """A run's results file cannot be used; the message says why, in words."""


@dataclass
class ResultsTable:
    """The rows, their columns in order, and a note for each run whose results were unusable."""

    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def read_results_file(path: Path, limit: int = MAX_RESULTS_BYTES) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when there is no such file.

    ResultsProblem for a file that is a link, not a regular file, larger than `limit`, not
    UTF-8 JSON, nested too deeply, or not a JSON object.
    """
    name = path.name
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if exc.errno == errno.ELOOP:
            raise ResultsProblem(f"{name} is a symbolic link; not following it") from None
        raise ResultsProblem(f"cannot open {name}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ResultsProblem(f"{name} is not a regular file")
        if info.st_size > limit:
            raise ResultsProblem(
                f"{name} is {info.st_size / MIB:.1f} MiB, over the {limit / MIB:g} MiB "
                "limit of what is read"
            )
        try:
            # Its size plus one, not the limit: read(n) sets aside n bytes first.
            data = fh.read(min(info.st_size, limit) + 1)
        except OSError as exc:
            raise ResultsProblem(f"cannot read {name}: {exc.strerror}") from None
    if len(data) > info.st_size:
        raise ResultsProblem(f"{name} grew while it was read (is it still being written?)")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ResultsProblem(f"{name} is not UTF-8 text") from None
    except ValueError as exc:
        raise ResultsProblem(f"{name} is not JSON ({exc})") from None
    except RecursionError:
        raise ResultsProblem(f"{name} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ResultsProblem(f"{name} holds a JSON {_json_kind(value)}, not an object")
    return value


def _json_kind(value: object) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def flatten(value: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """Nested objects as dotted keys ({"a": {"b": 1}} -> {"a.b": 1}); lists stay values.

    Returns the flat mapping and the keys that came out twice ({"a": {"b": 1}, "a.b": 2}):
    the first one is kept.
    """
    flat: dict[str, Any] = {}
    clashes: list[str] = []
    # Depth first, in the order written, without recursion (no Python recursion limit).
    stack = [(prefix, iter(value.items()))]
    while stack:
        base, items = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        name = f"{base}{entry[0]}"
        item = entry[1]
        if isinstance(item, dict) and item:
            stack.append((f"{name}.", iter(item.items())))
        elif name in flat:
            clashes.append(name)
        else:
            flat[name] = item
    return flat, clashes


def duration_seconds(run: RunRecord) -> float | None:
    """How long the run ran (until now while it runs), in seconds."""
    if run.started_at is None:
        return None
    end = run.completed_at or utcnow()
    return round(max((end - run.started_at).total_seconds(), 0.0), DURATION_DECIMALS)


def attempt_of(run: RunRecord) -> int | None:
    """The run's attempt: NULL until it first starts (a run another program started: 1)."""
    if run.attempt is not None:
        return run.attempt
    return 1 if run.started_at is not None else None


def _config_of(run: RunRecord) -> dict[str, Any]:
    try:
        value = json.loads(run.config_json)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return flatten(value)[0]


def differing_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys whose value is not the same in every run (missing counts as a value)."""
    keys: dict[str, None] = {}
    for config in configs:
        keys.update(dict.fromkeys(config))
    missing = object()
    out = []
    for key in keys:
        seen = [_comparable(c.get(key, missing)) for c in configs]
        if any(s != seen[0] for s in seen[1:]):
            out.append(key)
    return out


def _comparable(value: object) -> object:
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def build_table(
    runs: Sequence[RunRecord], results_path: Callable[[RunRecord], Path | None]
) -> ResultsTable:
    """The table of these runs; `results_path` says where a run's results file is (None:
    nowhere yet, e.g. a run that never started)."""
    configs = [_config_of(r) for r in runs]
    config_keys = differing_keys(configs) if len(runs) > 1 else []
    notes: list[str] = []
    results: list[dict[str, Any]] = []
    for run in runs:
        found, note = _results_of(run, results_path(run))
        results.append(found)
        if note:
            notes.append(f"run {run.id}: {note}")
    result_keys = list(dict.fromkeys(k for r in results for k in r))
    columns = [
        *BASE_COLUMNS,
        *(CONFIG_PREFIX + k for k in config_keys),
        *(RESULTS_PREFIX + k for k in result_keys),
    ]
    rows = []
    for run, config, found in zip(runs, configs, results, strict=True):
        row: Row = {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "attempt": attempt_of(run),
            "duration_seconds": duration_seconds(run),
        }
        row.update({CONFIG_PREFIX + k: config.get(k) for k in config_keys})
        row.update({RESULTS_PREFIX + k: found.get(k) for k in result_keys})
        rows.append(row)
    return ResultsTable(columns, rows, notes)


def _results_of(run: RunRecord, path: Path | None) -> tuple[dict[str, Any], str | None]:
    """(flat results, a note when something is wrong with them)."""
    completed = run.status == RunStatus.COMPLETED.value
    if path is None:
        return {}, ("it has no run directory" if completed else None)
    try:
        value = read_results_file(path)
    except ResultsProblem as exc:
        return {}, str(exc)
    if value is None:
        return {}, (f"it wrote no {path.name}" if completed else None)
    flat, clashes = flatten(value)
    note = None
    if clashes:
        note = f"{path.name} names {', '.join(sorted(set(clashes)))} twice; the first kept"
    return flat, note


# -- how cells look ---------------------------------------------------------------

# A table cell longer than this is cut (the whole value is in --csv and --json).
TABLE_CELL_WIDTH = 40


def cell_text(value: Any, width: int | None = None) -> str:
    """A value as text for the table and CSV: empty for None, JSON for lists and objects."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value) if width is None else f"{value:.6g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    text = text.replace("\n", " ")
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def resolve_column(columns: Iterable[str], name: str) -> str:
    """A column given in full or without its `config.`/`results.` prefix; ValueError with the
    reason for a name that matches none, or more than one."""
    names = list(columns)
    if name in names:
        return name
    matches = [c for c in names if c in (CONFIG_PREFIX + name, RESULTS_PREFIX + name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{name!r} is both {' and '.join(matches)}: name one of them")
    raise ValueError(f"no column {name!r} (columns: {', '.join(names)})")
