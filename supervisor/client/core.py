"""`Client`: submit runs and sweeps, find them again, wait for them, read their results."""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from supervisor.client.errors import NoDaemonWarning
from supervisor.client.handles import Run, Runs, Sweep
from supervisor.client.session import Session
from supervisor.db import NewRun, new_run_id
from supervisor.errors import NotFoundError, ValidationError
from supervisor.queue.rules import MAX_SWEEP_RUNS  # as `runsup submit --sweep`
from supervisor.settings import Settings

# submit() warns when the daemon's heartbeat is older than this (SPEC 7 says a minute).
NO_DAEMON_SECONDS = 60.0


class Client(Session):
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
        super().__init__(config, settings=settings)
        self._warned_no_daemon = False

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

        record = self._store.get(run_id)
        return Run(self, record.id, record)

    def runs(self, run_ids: Iterable[str]) -> Runs:
        """A handle on these runs together (every one must exist)."""

        ids = _ids(run_ids)
        found = {r.id for r in self._store.get_many(ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"no run with id {', '.join(missing)}")
        return Runs(self, ids)

    def sweep_of(self, sweep_id: str) -> Sweep:
        """The handle of an existing sweep; NotFoundError if no run carries this sweep id."""

        if not self._store.sweep_runs(sweep_id):
            raise NotFoundError(f"no sweep with id {sweep_id!r}")
        return Sweep(self, sweep_id)

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
