"""What the command line needs before a command can act: the database opened the way the command
may open it, the daemon's folders made, a word when no daemon serves the database, and a run's
config checked where its simulation's keys are known (the built-in erlang-demo).

SPEC section 7: commands that only read never create a database (a mistyped path must not look
like an empty queue); a folder that cannot be made is one line naming it, never a traceback;
commands that queue work say when no daemon has served the database for a minute.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.errors import DatabaseError, SupervisorError, ValidationError
from supervisor.heartbeat import heartbeat_path, last_beat
from supervisor.settings import BUILTIN_TEMPLATES, Settings

if TYPE_CHECKING:
    from supervisor.db import Store

# A daemon beats every HEARTBEAT_INTERVAL_SECONDS (10 s); six missed beats mean none serves.
NO_DAEMON_AFTER_SECONDS = 60.0


class MissingDatabase(DatabaseError):
    """A command that only reads was pointed at a database that does not exist."""


def os_error_words(exc: OSError) -> str:
    """An OSError as one line: what it is about and why ("cannot create /x: Permission denied")."""
    why = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {why}"
    return why


def make_dir(path: Path, what: str) -> None:
    """Create a folder (and its parents) or say in one line why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        at = f" (at {exc.filename})" if exc.filename not in (None, str(path)) else ""
        raise SupervisorError(f"cannot create {what} {path}: {why}{at}") from None


def require_database(settings: Settings) -> None:
    """MissingDatabase, naming the path, when the database file does not exist."""
    path = settings.database_path
    if path is not None and not path.exists():
        raise MissingDatabase(
            f"no database at {path} (check --config, RUNSUP_CONFIG and RUNSUP_DATABASE; "
            "`runsup submit` or `runsup daemon` creates it)"
        )


def open_store(settings: Settings, *, create: bool) -> Store:
    """The database of `settings`; with `create`, made (with its folder) if it is missing."""
    from supervisor.db import Store  # here: SQLAlchemy is most of a short command's start

    path = settings.database_path
    if path is not None:
        if not create:
            require_database(settings)
        else:
            make_dir(path.parent, "the database's folder")
    try:
        return Store.open(settings.database_url)
    except OSError as exc:
        raise DatabaseError(f"cannot open the database {path}: {os_error_words(exc)}") from None


def prepare_daemon(settings: Settings) -> None:
    """The folders the daemon writes in, made before it starts (one line if one cannot be)."""
    path = settings.database_path
    if path is not None:
        make_dir(path.parent, "the database's folder")
    make_dir(settings.runs_dir, "runs_dir")


def daemon_absent(settings: Settings, now: float | None = None) -> str | None:
    """A warning when no daemon has served this database for NO_DAEMON_AFTER_SECONDS, or None."""
    beat = last_beat(heartbeat_path(settings.database_path, settings.runs_dir))
    where = settings.database_path or settings.database
    start = "start one with `runsup daemon` (or `systemctl start run-supervisor`)"
    if beat is None:
        return f"no daemon has ever served {where}: runs wait until one does; {start}"
    age = (time.time() if now is None else now) - beat
    if age < NO_DAEMON_AFTER_SECONDS:
        return None
    return (
        f"no daemon has served {where} for {_minutes(age)}: runs wait until one does; {start}"
    )


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} minute" + ("" if minutes == 1 else "s")
    return f"{minutes // 60} hours"


def check_run_config(settings: Settings, template_name: str, config: dict[str, Any]) -> None:
    """Refuse a config the built-in simulation would refuse (an unknown key, a bad value), before
    it is queued; other templates' simulations own their keys."""
    from supervisor import demo_sim

    template = settings.templates.get(template_name)
    builtin = BUILTIN_TEMPLATES[demo_sim.PROG]
    if template is None or template.command != builtin.command:
        return
    try:
        demo_sim.parse_config(config)
    except demo_sim.DemoConfigError as exc:
        raise ValidationError(f"{template_name}: {exc}") from None
