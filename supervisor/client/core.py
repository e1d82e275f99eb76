"""`Client`: submit runs and sweeps, find them again, wait for them, read their results."""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from supervisor.client.errors import NoDaemonWarning, ResultsWarning, WaitTimeout
from supervisor.db import NewRun, RunRecord, is_valid_run_id, new_run_id
from supervisor.db.clientstore import ClientStore
from supervisor.errors import NotFoundError, ValidationError
from supervisor.queue import MAX_SWEEP_RUNS  # as `runsup submit --sweep`
from supervisor.results import ResultsTable, build_table
from supervisor.settings import DEFAULT_RESULTS_FILE, Settings, load_settings

if TYPE_CHECKING:
    from supervisor.client.handles import Run, Runs, Sweep

# wait() and watch() look at SQLite's change counter (PRAGMA data_version, microseconds) this
# often and read the runs again only when it moved: a commit is seen within this much.
WAIT_POLL_SECONDS = 0.02
# ... and read them again at least this often anyway (a safety net; nothing should need it).
WAIT_REREAD_SECONDS = 5.0
# submit() warns when the daemon's heartbeat is older than this (SPEC 7 says a minute).
NO_DAEMON_SECONDS = 60.0

T = TypeVar("T")


class Client:
    """The runs database, as the command line sees it, for programs and notebooks.

    `Client()` finds the configuration as `runsup` does (`config`, else $RUNSUP_CONFIG, else
    the defaults). It opens an existing database and never creates or upgrades one; it writes
    only what SPEC section 3 lets any program write (PENDING rows, cancel requests), so it needs
    no daemon: submitted runs wait until one serves. Handles it returns are ids, valid in any
    process and after any restart.
    """

    def __init__(
        self, config: str | os.PathLike[str] | None = None, *, settings: Settings | None = None
    ) -> None:
        self.settings = settings if settings is not None else load_settings(config)
        self._store = ClientStore.open(self.settings.database_url, self.settings.database_path)
        self._warned_no_daemon = False

    def close(self) -> None:
        """Release the database connections (handles made by this client stop working)."""
        self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(database={self.settings.database!r})"

    # -- submitting ------------------------------------------------------------------

    def submit(
        self,
        template: str,
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        priority: int | None = None,
        after: Sequence[str] = (),
        after_any: Sequence[str] = (),
        not_before: datetime | None = None,
    ) -> Run:
        """Queue one run of `template` with this config object; returns its handle.

        `after`: run ids that must COMPLETE first (if one fails, this run is CANCELLED);
        `after_any`: run ids that must end first, however; `not_before`: an aware datetime.
        """
        from supervisor.client.handles import Run

        self._check_template(template)
        new = NewRun(template, _config_text(config or {}), name, priority)
        record = self._store.submit(
            [new], after=_ids(after), after_any=_ids(after_any), not_before=not_before
        )[0]
        self._warn_if_no_daemon()
        return Run(self, record.id, record)

    def sweep(
        self,
        template: str,
        base: Mapping[str, Any] | None = None,
        grid: Mapping[str, Iterable[Any]] | None = None,
        *,
        name: str | None = None,
        priority: int | None = None,
        after: Sequence[str] = (),
        after_any: Sequence[str] = (),
    ) -> Sweep:
        """Queue one run for each combination of the `grid` values (first key slowest), each
        with `base` and its values set (dotted keys set nested values, as `--set` does), all
        in one transaction, sharing a new sweep id; returns the sweep's handle."""
        from supervisor.client.handles import Sweep

        self._check_template(template)
        axes = [
            (key, [_json_value(v, key) for v in values]) for key, values in (grid or {}).items()
        ]
        total = 1
        for key, values in axes:
            if not values:
                raise ValidationError(f"grid key {key!r} has no values")
            total *= len(values)
        if total > MAX_SWEEP_RUNS:
            raise ValidationError(f"the sweep has {total} combinations; at most {MAX_SWEEP_RUNS}")
        start = dict(base or {})
        new = []
        for combo in itertools.product(*[[(k, v) for v in vs] for k, vs in axes]):
            config = start
            for key, value in combo:
                config = _with_value(config, key, value)
            words = " ".join(f"{k}={_value_words(v)}" for k, v in combo)
            run_name = f"{name} {words}" if name and words else (name or words or None)
            new.append(NewRun(template, _config_text(config), run_name, priority))
        sweep_id = new_run_id()
        self._store.submit(new, after=_ids(after), after_any=_ids(after_any), sweep_id=sweep_id)
        self._warn_if_no_daemon()
        return Sweep(self, sweep_id)

    # -- finding runs again -------------------------------------------------------------

    def run(self, run_id: str) -> Run:
        """The handle of an existing run; NotFoundError if there is none."""
        from supervisor.client.handles import Run

        record = self._store.get(run_id)
        return Run(self, record.id, record)

    def runs(self, run_ids: Iterable[str]) -> Runs:
        """A handle on these runs together (every one must exist)."""
        from supervisor.client.handles import Runs

        ids = _ids(run_ids)
        found = {r.id for r in self._store.get_many(ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"no run with id {', '.join(missing)}")
        return Runs(self, ids)

    def sweep_of(self, sweep_id: str) -> Sweep:
        """The handle of an existing sweep; NotFoundError if no run carries this sweep id."""
        from supervisor.client.handles import Sweep

        if not self._store.sweep_runs(sweep_id):
            raise NotFoundError(f"no sweep with id {sweep_id!r}")
        return Sweep(self, sweep_id)

    # -- what the handles share ---------------------------------------------------------

    @property
    def store(self) -> ClientStore:
        """The database, as another program may use it (SPEC section 3)."""
        return self._store

    def results_path(self, record: RunRecord) -> Path | None:
        """Where a run's results file is (its template's `results_file`); None if the run has
        no directory yet."""
        template = self.settings.templates.get(record.template)
        name = template.results_file if template is not None else DEFAULT_RESULTS_FILE
        if record.run_dir:
            return Path(record.run_dir) / name
        if record.started_at is not None and is_valid_run_id(record.id):
            # Started by another program that did not record its directory: the default one.
            return self.settings.runs_dir / record.id / name
        return None

    def table(self, records: Sequence[RunRecord], *, warn: bool = True) -> ResultsTable:
        """The results table of these runs (as `runsup results`); with `warn`, one
        ResultsWarning for each run whose results file could not be used."""
        table = build_table(records, self.results_path)
        if warn:
            for note in table.notes:
                warnings.warn(note, ResultsWarning, stacklevel=3)
        return table

    def wait_for(
        self,
        read: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float | None,
        what: str,
    ) -> T:
        """Read until `done(read())`: again each time the database's change counter moves
        (looked at every WAIT_POLL_SECONDS). WaitTimeout after `timeout` seconds."""
        for value, finished in self.follow(read, done, timeout, what):
            if finished:
                return value
        raise AssertionError("unreachable")  # follow() ends only after a finished value

    def follow(
        self,
        read: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float | None,
        what: str,
    ) -> Iterator[tuple[T, bool]]:
        """Each new reading (the first at once, then one after each commit anyone makes) with
        whether it is done; ends after the first that is. WaitTimeout after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # The counter is read before the rows: a commit landing between is seen next time.
        version = self._store.data_version()
        value = read()
        last_read = time.monotonic()
        while True:
            finished = done(value)
            yield value, finished
            if finished:
                return
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise WaitTimeout(f"{what}: not done after {timeout:g} s (the runs go on)")
                time.sleep(WAIT_POLL_SECONDS)
                current = self._store.data_version()
                if current != version or time.monotonic() - last_read >= WAIT_REREAD_SECONDS:
                    break
            version = current
            value = read()
            last_read = time.monotonic()

    # -- helpers -------------------------------------------------------------------------

    def _check_template(self, template: str) -> None:
        if template not in self.settings.templates:
            known = ", ".join(sorted(self.settings.templates))
            raise ValidationError(f"unknown template {template!r} (known: {known})")

    def _warn_if_no_daemon(self) -> None:
        from supervisor.heartbeat import heartbeat_path, last_beat

        if self._warned_no_daemon:
            return
        beat = last_beat(heartbeat_path(self.settings.database_path, self.settings.runs_dir))
        if beat is None or time.time() - beat > NO_DAEMON_SECONDS:
            self._warned_no_daemon = True
            warnings.warn(
                f"no daemon has served {self.settings.database} for a minute: the runs wait "
                "until `runsup daemon` (or the service) runs",
                NoDaemonWarning,
                stacklevel=3,
            )


def _ids(values: Iterable[str]) -> list[str]:
    """Run ids from strings or handles (anything with an `id`)."""
    out = []
    for value in values:
        run_id = getattr(value, "id", value)
        if not isinstance(run_id, str):
            raise ValidationError(f"not a run id: {value!r}")
        out.append(run_id)
    return out


def _json_value(value: Any, key: str) -> Any:
    """A grid value as JSON will hold it (numpy scalars become Python numbers)."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes | list | dict):
        value = item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise ValidationError(f"grid key {key!r}: {value!r} cannot be written as JSON") from None
    return value


def _value_words(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _with_value(config: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `config` with `key` set; a dotted key sets a nested value (as `--set`)."""
    parts = key.split(".")
    out = dict(config)
    target = out
    for part in parts[:-1]:
        nested = target.get(part)
        if nested is None:
            nested = {}
        elif not isinstance(nested, dict):
            raise ValidationError(f"grid key {key!r}: {part!r} is already a plain value")
        target[part] = dict(nested)
        target = target[part]
    target[parts[-1]] = value
    return out


def _config_text(config: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(config))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"config cannot be written as JSON: {exc}") from None
