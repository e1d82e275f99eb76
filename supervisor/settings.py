"""The one reader of the TOML configuration file and the RUNSUP_* variables."""

from __future__ import annotations

import math
import os
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from supervisor.errors import ConfigError

APP_NAME = "run-supervisor"
DATABASE_FILENAME = "runs.db"
RUNS_DIRNAME = "runs"

ENV_CONFIG = "RUNSUP_CONFIG"
ENV_DATABASE = "RUNSUP_DATABASE"
ENV_RUNS_DIR = "RUNSUP_RUNS_DIR"
ENV_MAX_CONCURRENT = "RUNSUP_MAX_CONCURRENT"

DEFAULT_CANCEL_GRACE_SECONDS = 10.0
DEFAULT_RESCAN_INTERVAL_SECONDS = 2.0
DEFAULT_DB_POLL_INTERVAL_SECONDS = 2.0
DEFAULT_POLL_DELAY_MS = 300
# Each run's log is cut in the middle (head and tail kept) once it grows past this.
DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024
MIN_MAX_LOG_BYTES = 64 * 1024  # as supervisor.logcap.MIN_CAP_BYTES (not imported: start-up cost)
# The daemon folds the SQLite -wal file back (and truncates it) once it is larger than this.
DEFAULT_WAL_CHECKPOINT_BYTES = 8 * 1024 * 1024

CONFIG_FORMATS = ("json", "ini")
ON_STOP_CHOICES = ("detach", "cancel")
PLACEHOLDERS = frozenset({"run_id", "run_dir", "config_path", "progress_path", "python"})

ConfigFormat = Literal["json", "ini"]
OnStop = Literal["detach", "cancel"]


@dataclass(frozen=True)
class Template:
    """A named way to run a simulation; runs can only name one of these."""

    name: str
    command: tuple[str, ...]
    config_format: ConfigFormat = "json"
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float | None = None
    progress_patterns: tuple[str, ...] = ()  # SPEC 12; checked by supervisor.outputpatterns

    @property
    def config_filename(self) -> str:
        """The name of the config file written into the run directory."""
        return f"config.{self.config_format}"

    def render_command(self, values: Mapping[str, str]) -> list[str]:
        """The argument list with placeholders filled in (never a shell string)."""
        return [arg.format_map(values) for arg in self.command]


BUILTIN_TEMPLATES: dict[str, Template] = {
    "erlang-demo": Template(
        name="erlang-demo",
        command=("{python}", "-m", "supervisor.demo_sim", "--config", "{config_path}"),
        config_format="json",
        env={"OMP_NUM_THREADS": "1"},
    )
}


@dataclass(frozen=True)
class Settings:
    """Everything the daemon and the commands are configured with."""

    database: str
    runs_dir: Path
    max_concurrent_runs: int
    cancel_grace_seconds: float = DEFAULT_CANCEL_GRACE_SECONDS
    on_stop: OnStop = "detach"
    templates: Mapping[str, Template] = field(default_factory=lambda: dict(BUILTIN_TEMPLATES))
    # Not in SPEC's example, ours: the safety nets behind file and database events.
    rescan_interval_seconds: float = DEFAULT_RESCAN_INTERVAL_SECONDS
    db_poll_interval_seconds: float = DEFAULT_DB_POLL_INTERVAL_SECONDS
    force_polling: bool = False
    poll_delay_ms: int = DEFAULT_POLL_DELAY_MS
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    wal_checkpoint_bytes: int = DEFAULT_WAL_CHECKPOINT_BYTES
    config_file: Path | None = None

    @property
    def database_url(self) -> str:
        """The database as an SQLAlchemy URL."""
        if "://" in self.database:
            return self.database
        return f"sqlite:///{Path(self.database).expanduser().resolve()}"

    @property
    def database_path(self) -> Path | None:
        """The SQLite file, when the database is one; None for other URLs."""
        url = self.database_url
        prefix = "sqlite:///"
        if not url.startswith(prefix) or url == prefix or ":memory:" in url:
            return None
        return Path(url[len(prefix) :].split("?", 1)[0])


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """$STATE_DIRECTORY under systemd, else the XDG state home."""
    state = environ.get("STATE_DIRECTORY")
    if state:
        # systemd passes a colon-separated list when several are configured.
        return Path(state.split(":", 1)[0])
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return base / APP_NAME


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the TOML file (--config, else $RUNSUP_CONFIG, else none) and RUNSUP_* overrides."""
    env = os.environ if environ is None else environ
    chosen = config_file if config_file is not None else env.get(ENV_CONFIG) or None
    path = Path(chosen).expanduser() if chosen is not None else None
    data = _read_toml(path) if path is not None else {}
    settings = _from_mapping(data, path, env)
    return _apply_environment(settings, env)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None


class _Reader:
    """Typed access to one TOML table, with errors that name the file and key."""

    def __init__(self, data: Mapping[str, Any], source: Path | None, prefix: str = "") -> None:
        self.data = data
        self.source = source
        self.prefix = prefix

    def fail(self, key: str, expected: str, got: object = None) -> ConfigError:
        where = f"config file {self.source}" if self.source else "configuration"
        shown = f", got {_describe(got)}" if got is not None else ""
        return ConfigError(f"{where}: {self.prefix}{key}: expected {expected}{shown}")

    def check_keys(self, allowed: frozenset[str]) -> None:
        for key in self.data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(key, f"one of the known keys ({known})", f"unknown key {key!r}")

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string", value)
        return value

    def number(self, key: str, *, positive: bool = False) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "a number", value)
        if not math.isfinite(value):
            # TOML allows nan and inf; neither is a usable grace period or limit.
            raise self.fail(key, "a finite number", value)
        if value < 0 or (positive and value == 0):
            raise self.fail(key, "a positive number" if positive else "a number >= 0", value)
        return float(value)

    def integer(self, key: str, *, minimum: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "a whole number", value)
        if value < minimum:
            raise self.fail(key, f"a whole number >= {minimum}", value)
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if value not in choices:
            raise self.fail(key, " or ".join(repr(c) for c in choices), value)
        return str(value)

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "a table", value)
        return value


def _describe(value: object) -> str:
    if isinstance(value, str) and value.startswith("unknown key"):
        return value
    return f"{type(value).__name__} {value!r}"


_TOP_KEYS = frozenset(
    {
        "database",
        "runs_dir",
        "max_concurrent_runs",
        "cancel_grace_seconds",
        "on_stop",
        "templates",
        "rescan_interval_seconds",
        "db_poll_interval_seconds",
        "force_polling",
        "poll_delay_ms",
        "max_log_bytes",
        "wal_checkpoint_bytes",
    }
)
_TEMPLATE_KEYS = frozenset(
    {"command", "config_format", "env", "timeout_seconds", "progress_patterns"}
)


def _from_mapping(data: Mapping[str, Any], source: Path | None, env: Mapping[str, str]) -> Settings:
    top = _Reader(data, source)
    top.check_keys(_TOP_KEYS)
    base = source.parent.resolve() if source is not None else Path.cwd()
    state_dir = default_state_dir(env)

    database = top.string("database")
    if database is not None and "://" not in database:
        database = str(_resolve(database, base))
    runs_dir = top.string("runs_dir")
    templates = dict(BUILTIN_TEMPLATES)
    for name, raw in top.table("templates").items():
        templates[name] = _template(name, raw, source)

    on_stop = top.choice("on_stop", ON_STOP_CHOICES) or "detach"
    poll_delay = top.integer("poll_delay_ms", minimum=1)
    max_log = top.integer("max_log_bytes", minimum=MIN_MAX_LOG_BYTES)
    wal_bytes = top.integer("wal_checkpoint_bytes", minimum=1)
    return Settings(
        database=database or str(state_dir / DATABASE_FILENAME),
        runs_dir=_resolve(runs_dir, base) if runs_dir else state_dir / RUNS_DIRNAME,
        max_concurrent_runs=top.integer("max_concurrent_runs", minimum=1) or _cpu_count(),
        cancel_grace_seconds=_or(top.number("cancel_grace_seconds"), DEFAULT_CANCEL_GRACE_SECONDS),
        on_stop="cancel" if on_stop == "cancel" else "detach",
        templates=templates,
        rescan_interval_seconds=_or(
            top.number("rescan_interval_seconds", positive=True), DEFAULT_RESCAN_INTERVAL_SECONDS
        ),
        db_poll_interval_seconds=_or(
            top.number("db_poll_interval_seconds", positive=True), DEFAULT_DB_POLL_INTERVAL_SECONDS
        ),
        force_polling=bool(top.boolean("force_polling")),
        poll_delay_ms=poll_delay if poll_delay is not None else DEFAULT_POLL_DELAY_MS,
        max_log_bytes=max_log if max_log is not None else DEFAULT_MAX_LOG_BYTES,
        wal_checkpoint_bytes=wal_bytes if wal_bytes is not None else DEFAULT_WAL_CHECKPOINT_BYTES,
        config_file=source,
    )


def _template(name: str, raw: object, source: Path | None) -> Template:
    prefix = f"templates.{name}."
    if not isinstance(raw, dict):
        raise _Reader({}, source).fail(f"templates.{name}", "a table", raw)
    reader = _Reader(raw, source, prefix)
    reader.check_keys(_TEMPLATE_KEYS)
    command = raw.get("command")
    if command is None:
        raise reader.fail("command", "a command (a non-empty list of strings)")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, str) for a in command)
        or not command[0]
    ):
        raise reader.fail("command", "a non-empty list of strings", command)
    for arg in command:
        _check_placeholders(arg, reader)
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise reader.fail("env", "a table of string values", env)
    fmt = reader.choice("config_format", CONFIG_FORMATS) or "json"
    patterns: tuple[str, ...] = ()
    if "progress_patterns" in raw:  # RE2 is loaded only for a template that has the key
        from supervisor.outputpatterns import check_patterns

        where = f"config file {source}" if source else "configuration"
        patterns = check_patterns(raw["progress_patterns"], f"{where}: {prefix}progress_patterns")
    return Template(
        name=name,
        command=tuple(command),
        config_format="ini" if fmt == "ini" else "json",
        env=dict(env),
        timeout_seconds=reader.number("timeout_seconds", positive=True),
        progress_patterns=patterns,
    )


def _check_placeholders(arg: str, reader: _Reader) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
    except ValueError as exc:
        raise reader.fail("command", f"valid placeholders ({exc})", arg) from None
    for name in fields:
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise reader.fail("command", f"only the placeholders {known}", arg)


def _apply_environment(settings: Settings, env: Mapping[str, str]) -> Settings:
    changes: dict[str, Any] = {}
    if env.get(ENV_DATABASE):
        value = env[ENV_DATABASE]
        changes["database"] = value if "://" in value else str(_resolve(value, Path.cwd()))
    if env.get(ENV_RUNS_DIR):
        changes["runs_dir"] = _resolve(env[ENV_RUNS_DIR], Path.cwd())
    if env.get(ENV_MAX_CONCURRENT):
        raw = env[ENV_MAX_CONCURRENT]
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if limit < 1:
            raise ConfigError(f"{ENV_MAX_CONCURRENT}: expected a whole number >= 1, got {raw!r}")
        changes["max_concurrent_runs"] = limit
    return replace(settings, **changes) if changes else settings


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) or 1
