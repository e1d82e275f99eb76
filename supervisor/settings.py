"""The one reader of the TOML configuration file and the RUNSUP_* variables."""

from __future__ import annotations

import ipaddress
import math
import os
import re
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
# The variables that choose the configuration, the database or the runs directory.
SETTINGS_VARIABLES = (ENV_CONFIG, ENV_DATABASE, ENV_RUNS_DIR, ENV_MAX_CONCURRENT)

DEFAULT_CANCEL_GRACE_SECONDS = 10.0
DEFAULT_RESCAN_INTERVAL_SECONDS = 2.0
DEFAULT_DB_POLL_INTERVAL_SECONDS = 2.0
DEFAULT_POLL_DELAY_MS = 300
# Each run's log is cut in the middle (head and tail kept) once it grows past this.
DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024
# As supervisor.progress.logcap.MIN_CAP_BYTES (not imported: start-up cost).
MIN_MAX_LOG_BYTES = 64 * 1024
# The daemon folds the SQLite -wal file back (and truncates it) once it is larger than this.
DEFAULT_WAL_CHECKPOINT_BYTES = 8 * 1024 * 1024

CONFIG_FORMATS = ("json", "ini")
ON_STOP_CHOICES = ("detach", "cancel")
PLACEHOLDERS = frozenset({"run_id", "run_dir", "config_path", "progress_path", "python"})
# An on_finish hook may also name the status the run ended with (SPEC section 13).
HOOK_PLACEHOLDERS = PLACEHOLDERS | {"status"}

# SPEC sections 9 to 11: what a template asks for, and how its runs are retried.
LOCAL_EXECUTOR = "local"
DEFAULT_TEMPLATE_CPUS = 1
DEFAULT_MAX_ATTEMPTS = 1
RETRY_OUTCOMES = ("signal", "lost", "node_failure", "timeout", "out_of_memory", "preempted")
RETRY_ANY_EXIT = "exit:any"
RETRY_EXIT_PREFIX = "exit:"
MAX_EXIT_CODE = 255
DEFAULT_RETRY_ON = ("signal", "lost", "node_failure", "preempted")
# SPEC section 15. Signals a simulation may be warned with: catchable, meaning no cancel (TERM,
# INT, HUP do: SPEC section 6) and known to Slurm's --signal by name.
CHECKPOINT_SIGNALS = ("USR1", "USR2", "ALRM", "URG", "XCPU")
# Without checkpoint_seconds, the warning comes this long before the limit (Slurm's own
# default for --signal without @time).
DEFAULT_CHECKPOINT_SECONDS = 60.0
MAX_CHECKPOINT_SECONDS = 65535  # Slurm's --signal keeps it in 16 bits
# Above 128 the keeper's shell reads an exit status as a death by signal (128+N).
MAX_CHECKPOINT_EXIT_CODE = 128
DEFAULT_RETRY_DELAY_SECONDS = 10.0
# SPEC section 15: what `runsup results` reads in a run's directory.
DEFAULT_RESULTS_FILE = "results.json"

# SPEC section 9: a cluster executor.
EXECUTOR_KINDS = ("slurm",)
MAX_EXECUTOR_NAME_LENGTH = 100  # runs.executor is VARCHAR(100)
DEFAULT_MAX_SUBMITTED = 100
DEFAULT_EXECUTOR_POLL_INTERVAL_SECONDS = 10.0
# Ours: how long one sbatch, squeue, scancel or sacct call may take before it is abandoned.
DEFAULT_EXECUTOR_COMMAND_TIMEOUT_SECONDS = 30.0

# SPEC sections 10, 13 and 14.
GPUS_AUTO: Literal["auto"] = "auto"
DEFAULT_HOOK_TIMEOUT_SECONDS = 30.0
MAX_PORT = 65535
MAX_HOSTNAME_LENGTH = 253

# Sizes: a whole number of bytes, or a number with K, M, G or T (powers of 1024).
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_PATTERN = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)", re.IGNORECASE)
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

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
    # SPEC sections 9 to 13.
    executor: str = LOCAL_EXECUTOR
    cpus: int = DEFAULT_TEMPLATE_CPUS
    gpus: int | None = None  # None: GPUs not managed for this template's runs
    memory_max: int | None = None  # bytes
    max_concurrent: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS
    on_finish: tuple[str, ...] | None = None  # replaces [hooks] on_finish when set
    progress_patterns: tuple[str, ...] = ()  # SPEC 12; checked by supervisor.progress.patterns
    # SPEC section 15: later attempts carry on (RUNSUP_RESUME=1); a warning signal before a
    # time limit or preemption ("USR1", without SIG); "saved a checkpoint, start me again".
    resume: bool = False
    checkpoint_signal: str | None = None
    checkpoint_seconds: float | None = None  # set (default 60) when checkpoint_signal is
    checkpoint_exit_code: int | None = None
    results_file: str = DEFAULT_RESULTS_FILE  # SPEC 15: relative to the run directory

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
class ResourcesSettings:
    """[resources]: what local runs' reservations may add up to (SPEC section 10)."""

    cpus: int | None = None  # None: the CPUs this process may run on
    gpus: Literal["auto"] | tuple[str, ...] = GPUS_AUTO
    memory: int | None = None  # bytes; None: physical memory
    pin_cpus: bool = False  # ours: bind each local run to the CPUs it holds (issue 13)

    def cpu_capacity(self) -> int:
        """The configured CPUs, else the number this process may run on."""
        return self.cpus if self.cpus is not None else _cpu_count()

    def memory_capacity(self) -> int:
        """The configured memory in bytes, else the machine's physical memory."""
        if self.memory is not None:
            return self.memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class ExecutorSettings:
    """One [executors.NAME] table: a Slurm cluster runs are sent to (SPEC section 9)."""

    name: str
    kind: Literal["slurm"]
    runs_dir: Path
    partition: str | None = None
    account: str | None = None
    sbatch_args: tuple[str, ...] = ()
    max_submitted: int = DEFAULT_MAX_SUBMITTED
    poll_interval_seconds: float = DEFAULT_EXECUTOR_POLL_INTERVAL_SECONDS
    command_timeout_seconds: float = DEFAULT_EXECUTOR_COMMAND_TIMEOUT_SECONDS


@dataclass(frozen=True)
class HooksSettings:
    """[hooks]: the command run once for each run that reaches a final status (SPEC 13)."""

    on_finish: tuple[str, ...] | None = None
    timeout_seconds: float = DEFAULT_HOOK_TIMEOUT_SECONDS


@dataclass(frozen=True)
class ListenAddress:
    """A HOST:PORT to serve on; host is an IP address (without brackets) or a host name."""

    host: str
    port: int


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: where the daemon serves /metrics, if anywhere (SPEC section 14)."""

    listen: ListenAddress | None = None


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: final runs the daemon prunes once a day (`runsup db prune`); off by default."""

    keep_days: float | None = None  # prune final runs that ended longer ago than this
    files: bool = False  # their run directories too


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
    resources: ResourcesSettings = field(default_factory=ResourcesSettings)
    executors: Mapping[str, ExecutorSettings] = field(default_factory=dict)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    def on_finish_for(self, template: Template) -> tuple[str, ...] | None:
        """The hook for a run of `template`: its own if it has one, else the global one."""
        return template.on_finish if template.on_finish is not None else self.hooks.on_finish

    @property
    def cpu_capacity(self) -> int:
        """The CPUs local runs' reservations may add up to: `[resources] cpus` when set, else
        the number of CPUs, but never fewer than max_concurrent_runs (a limit set above the
        CPU count asks for that many runs at once, each asking 1 CPU by default)."""
        if self.resources.cpus is not None:
            return self.resources.cpus
        return max(self.resources.cpu_capacity(), self.max_concurrent_runs)

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

    def fail(self, key: str, expected: str, got: object = None, why: str = "") -> ConfigError:
        where = f"config file {self.source}" if self.source else "configuration"
        shown = f", got {_describe(got)}" if got is not None else ""
        reason = f" ({why})" if why else ""
        return ConfigError(f"{where}: {self.prefix}{key}: expected {expected}{shown}{reason}")

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

    def sub(self, key: str) -> _Reader:
        """A reader of the table at `key` (empty if absent), its unknown keys refused."""
        return _Reader(self.table(key), self.source, f"{self.prefix}{key}.")

    def size(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.fail(key, SIZE_EXPECTED, value, str(exc)) from None

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a list of non-empty strings", value)
        return tuple(value)

    def argv(self, key: str, placeholders: frozenset[str]) -> tuple[str, ...] | None:
        """An argument list (never a shell string) whose placeholders are all known."""
        value = self.data.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(a, str) for a in value)
            or not value[0]
        ):
            raise self.fail(key, "a non-empty list of strings", value)
        for arg in value:
            _check_placeholders(arg, self, key, placeholders)
        return tuple(value)


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
        "resources",
        "executors",
        "hooks",
        "metrics",
        "retention",
    }
)
# One key a line, so that a change adding keys touches only its own lines.
_TEMPLATE_KEYS = frozenset(
    {
        "command",
        "config_format",
        "env",
        "timeout_seconds",
        "executor",
        "cpus",
        "gpus",
        "memory_max",
        "max_concurrent",
        "max_attempts",
        "retry_on",
        "retry_delay_seconds",
        "on_finish",
        "progress_patterns",
        "resume",
        "checkpoint_signal",
        "checkpoint_seconds",
        "checkpoint_exit_code",
        "results_file",
    }
)
_RESOURCES_KEYS = frozenset({"cpus", "gpus", "memory", "pin_cpus"})
_EXECUTOR_KEYS = frozenset(
    {
        "kind",
        "runs_dir",
        "partition",
        "account",
        "sbatch_args",
        "max_submitted",
        "poll_interval_seconds",
        "command_timeout_seconds",
    }
)
_HOOKS_KEYS = frozenset({"on_finish", "timeout_seconds"})
_METRICS_KEYS = frozenset({"listen"})
_RETENTION_KEYS = frozenset({"keep_days", "files"})

SIZE_EXPECTED = 'a size: whole bytes, or a number with K, M, G or T (as "8G")'
DATABASE_EXPECTED = "a file path or an sqlite:/// URL naming a file"
LISTEN_EXPECTED = (
    "HOST:PORT (an IPv4 address, an IPv6 address in brackets or a host name; port 1-65535)"
)
RETRY_ON_EXPECTED = (
    "a list of outcomes: "
    + ", ".join(f'"{o}"' for o in RETRY_OUTCOMES)
    + f', "exit:N" (N from 1 to {MAX_EXIT_CODE}) or "{RETRY_ANY_EXIT}"'
)


def _from_mapping(data: Mapping[str, Any], source: Path | None, env: Mapping[str, str]) -> Settings:
    top = _Reader(data, source)
    top.check_keys(_TOP_KEYS)
    base = source.parent.resolve() if source is not None else Path.cwd()
    state_dir = default_state_dir(env)

    database = top.string("database")
    if database is not None:
        try:
            database = normalize_database(database, base)
        except ValueError as exc:
            raise top.fail("database", DATABASE_EXPECTED, database, str(exc)) from None
    runs_dir = _runs_dir(top.string("runs_dir"), base, state_dir, env)
    executors = _executors(top, runs_dir, base)
    templates = dict(BUILTIN_TEMPLATES)
    for name, raw in top.table("templates").items():
        templates[name] = _template(name, raw, source, executors)

    on_stop = top.choice("on_stop", ON_STOP_CHOICES) or "detach"
    poll_delay = top.integer("poll_delay_ms", minimum=1)
    max_log = top.integer("max_log_bytes", minimum=MIN_MAX_LOG_BYTES)
    wal_bytes = top.integer("wal_checkpoint_bytes", minimum=1)
    return Settings(
        database=database or str(state_dir / DATABASE_FILENAME),
        runs_dir=runs_dir,
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
        resources=_resources(top.sub("resources")),
        executors=executors,
        hooks=_hooks(top.sub("hooks")),
        metrics=_metrics(top.sub("metrics")),
        retention=_retention(top.sub("retention")),
    )


def _runs_dir(value: str | None, base: Path, state_dir: Path, env: Mapping[str, str]) -> Path:
    # Resolved before the executors, whose runs_dir defaults to it (RUNSUP_RUNS_DIR included).
    if env.get(ENV_RUNS_DIR):
        return _resolve(env[ENV_RUNS_DIR], Path.cwd())
    return _resolve(value, base) if value else state_dir / RUNS_DIRNAME


def _template(
    name: str, raw: object, source: Path | None, executors: Mapping[str, ExecutorSettings]
) -> Template:
    prefix = f"templates.{name}."
    if not isinstance(raw, dict):
        raise _Reader({}, source).fail(f"templates.{name}", "a table", raw)
    reader = _Reader(raw, source, prefix)
    reader.check_keys(_TEMPLATE_KEYS)
    command = reader.argv("command", PLACEHOLDERS)
    if command is None:
        raise reader.fail("command", "a command (a non-empty list of strings)")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise reader.fail("env", "a table of string values", env)
    fmt = reader.choice("config_format", CONFIG_FORMATS) or "json"
    patterns: tuple[str, ...] = ()
    if "progress_patterns" in raw:  # RE2 is loaded only for a template that has the key
        from supervisor.progress.patterns import check_patterns

        where = f"config file {source}" if source else "configuration"
        patterns = check_patterns(raw["progress_patterns"], f"{where}: {prefix}progress_patterns")
    timeout = reader.number("timeout_seconds", positive=True)
    signal_name, lead = _checkpoint_signal(reader, timeout)
    return Template(
        name=name,
        command=command,
        config_format="ini" if fmt == "ini" else "json",
        env=dict(env),
        timeout_seconds=timeout,
        executor=_template_executor(reader, executors),
        cpus=_int_or(reader.integer("cpus", minimum=1), DEFAULT_TEMPLATE_CPUS),
        gpus=reader.integer("gpus", minimum=0),
        memory_max=reader.size("memory_max"),
        max_concurrent=reader.integer("max_concurrent", minimum=1),
        max_attempts=_int_or(reader.integer("max_attempts", minimum=1), DEFAULT_MAX_ATTEMPTS),
        retry_on=_retry_on(reader),
        retry_delay_seconds=_or(reader.number("retry_delay_seconds"), DEFAULT_RETRY_DELAY_SECONDS),
        on_finish=reader.argv("on_finish", HOOK_PLACEHOLDERS),
        progress_patterns=patterns,
        resume=bool(reader.boolean("resume")),
        checkpoint_signal=signal_name,
        checkpoint_seconds=lead,
        checkpoint_exit_code=_checkpoint_exit_code(reader),
        results_file=_results_file(reader),
    )


def _checkpoint_signal(reader: _Reader, timeout: float | None) -> tuple[str | None, float | None]:
    """checkpoint_signal ("USR1", "SIGUSR1" or "usr1" -> "USR1") and checkpoint_seconds."""
    raw = reader.data.get("checkpoint_signal")
    seconds = reader.number("checkpoint_seconds", positive=True)
    allowed = ", ".join(f'"{s}"' for s in CHECKPOINT_SIGNALS)
    if raw is None:
        if seconds is not None:
            raise reader.fail("checkpoint_seconds", "no value without a checkpoint_signal", seconds)
        return None, None
    name = raw.upper().removeprefix("SIG") if isinstance(raw, str) else None
    if name not in CHECKPOINT_SIGNALS:
        raise reader.fail("checkpoint_signal", f"one of {allowed}", raw)
    lead = DEFAULT_CHECKPOINT_SECONDS if seconds is None else seconds
    if lead > MAX_CHECKPOINT_SECONDS:
        raise reader.fail("checkpoint_seconds", f"at most {MAX_CHECKPOINT_SECONDS}", lead)
    if timeout is not None and lead >= timeout:
        why = "the signal would come before the attempt starts"
        expected = f"less than timeout_seconds ({timeout:g})"
        raise reader.fail("checkpoint_seconds", expected, lead, why)
    return name, lead


def _checkpoint_exit_code(reader: _Reader) -> int | None:
    code = reader.integer("checkpoint_exit_code", minimum=1)
    if code is not None and code > MAX_CHECKPOINT_EXIT_CODE:
        expected = f"a whole number from 1 to {MAX_CHECKPOINT_EXIT_CODE}"
        raise reader.fail("checkpoint_exit_code", expected, code, "above it reads as a signal")
    return code



def _results_file(reader: _Reader) -> str:
    """A path inside the run directory: relative, without `..`."""
    value = reader.string("results_file")
    if value is None:
        return DEFAULT_RESULTS_FILE
    parts = Path(value).parts
    if Path(value).is_absolute() or ".." in parts:
        raise reader.fail("results_file", "a path inside the run directory", value)
    return value


def _template_executor(reader: _Reader, executors: Mapping[str, ExecutorSettings]) -> str:
    name = reader.string("executor")
    if name is None:
        return LOCAL_EXECUTOR
    if name != LOCAL_EXECUTOR and name not in executors:
        defined = ", ".join(repr(n) for n in sorted(executors))
        others = f"a defined [executors.NAME] ({defined})" if defined else "no [executors.NAME] yet"
        raise reader.fail("executor", f"{LOCAL_EXECUTOR!r} or {others}", name)
    return name


def _retry_on(reader: _Reader) -> tuple[str, ...]:
    value = reader.data.get("retry_on")
    if value is None:
        return DEFAULT_RETRY_ON
    if not isinstance(value, list):
        raise reader.fail("retry_on", RETRY_ON_EXPECTED, value)
    for item in value:
        if not is_retry_outcome(item):
            raise reader.fail("retry_on", RETRY_ON_EXPECTED, value, f"{item!r} is not one")
    return tuple(dict.fromkeys(value))  # duplicates dropped, order kept


def is_retry_outcome(value: object) -> bool:
    """True for a valid `retry_on` entry: an outcome name, "exit:N" (0 < N < 256), "exit:any"."""
    if not isinstance(value, str):
        return False
    if value in RETRY_OUTCOMES or value == RETRY_ANY_EXIT:
        return True
    code = value.removeprefix(RETRY_EXIT_PREFIX)
    # Exit status 0 is success, never a failure to retry.
    return code != value and code.isascii() and code.isdigit() and 0 < int(code) <= MAX_EXIT_CODE


def _executors(top: _Reader, runs_dir: Path, base: Path) -> dict[str, ExecutorSettings]:
    out: dict[str, ExecutorSettings] = {}
    for name, raw in top.table("executors").items():
        key = f"executors.{name}"
        if name == LOCAL_EXECUTOR:
            raise top.fail(key, "another name: 'local' is reserved for this machine")
        if not name or len(name) > MAX_EXECUTOR_NAME_LENGTH:
            raise top.fail(key, f"a name of 1 to {MAX_EXECUTOR_NAME_LENGTH} characters", name)
        if not isinstance(raw, dict):
            raise top.fail(key, "a table", raw)
        out[name] = _executor(name, top.sub("executors").sub(name), runs_dir, base)
    return out


def _executor(name: str, reader: _Reader, runs_dir: Path, base: Path) -> ExecutorSettings:
    reader.check_keys(_EXECUTOR_KEYS)
    if reader.data.get("kind") is None:
        kinds = " or ".join(repr(k) for k in EXECUTOR_KINDS)
        raise reader.fail("kind", f"the executor's kind, required: {kinds}")
    reader.choice("kind", EXECUTOR_KINDS)
    own_dir = reader.string("runs_dir")
    max_submitted = reader.integer("max_submitted", minimum=1)
    return ExecutorSettings(
        name=name,
        kind="slurm",
        runs_dir=_resolve(own_dir, base) if own_dir else runs_dir,
        partition=reader.string("partition"),
        account=reader.string("account"),
        sbatch_args=reader.strings("sbatch_args") or (),
        max_submitted=_int_or(max_submitted, DEFAULT_MAX_SUBMITTED),
        poll_interval_seconds=_or(
            reader.number("poll_interval_seconds", positive=True),
            DEFAULT_EXECUTOR_POLL_INTERVAL_SECONDS,
        ),
        command_timeout_seconds=_or(
            reader.number("command_timeout_seconds", positive=True),
            DEFAULT_EXECUTOR_COMMAND_TIMEOUT_SECONDS,
        ),
    )


def _resources(reader: _Reader) -> ResourcesSettings:
    reader.check_keys(_RESOURCES_KEYS)
    return ResourcesSettings(
        cpus=reader.integer("cpus", minimum=1),
        gpus=_gpus(reader),
        memory=reader.size("memory"),
        pin_cpus=bool(reader.boolean("pin_cpus")),
    )


def _gpus(reader: _Reader) -> Literal["auto"] | tuple[str, ...]:
    value = reader.data.get("gpus")
    if value is None or value == GPUS_AUTO:
        return GPUS_AUTO
    expected = f'{GPUS_AUTO!r} or a list of GPU ids as CUDA_VISIBLE_DEVICES names them (["0", "1"])'
    if not isinstance(value, list):
        raise reader.fail("gpus", expected, value)
    for gpu in value:
        # Ids are joined with commas into CUDA_VISIBLE_DEVICES and runs.gpu_ids.
        if not isinstance(gpu, str) or not gpu or any(c == "," or c.isspace() for c in gpu):
            raise reader.fail("gpus", expected, value, f"{gpu!r} is not a GPU id")
    if len(set(value)) != len(value):
        raise reader.fail("gpus", expected, value, "an id is listed twice")
    return tuple(value)


def _hooks(reader: _Reader) -> HooksSettings:
    reader.check_keys(_HOOKS_KEYS)
    return HooksSettings(
        on_finish=reader.argv("on_finish", HOOK_PLACEHOLDERS),
        timeout_seconds=_or(
            reader.number("timeout_seconds", positive=True), DEFAULT_HOOK_TIMEOUT_SECONDS
        ),
    )


def _metrics(reader: _Reader) -> MetricsSettings:
    reader.check_keys(_METRICS_KEYS)
    listen = reader.string("listen")
    if listen is None:
        return MetricsSettings()
    try:
        return MetricsSettings(listen=parse_listen(listen))
    except ValueError as exc:
        raise reader.fail("listen", LISTEN_EXPECTED, listen, str(exc)) from None


def _retention(reader: _Reader) -> RetentionSettings:
    reader.check_keys(_RETENTION_KEYS)
    return RetentionSettings(
        keep_days=reader.number("keep_days", positive=True),
        files=bool(reader.boolean("files")),
    )


def parse_size(value: object) -> int:
    """Bytes from a size: a whole number of bytes, or a number with K, M, G or T (1024-based)."""
    if isinstance(value, bool):
        raise ValueError("true or false is not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE_PATTERN.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a size")
        number, unit = match.groups()
        scaled = float(number) * SIZE_UNITS[unit.upper()]
        if (not unit and "." in number) or scaled != int(scaled):
            raise ValueError(f"{value!r} is not a whole number of bytes")
        size = int(scaled)
    else:
        raise ValueError(f"a {type(value).__name__} is not a size")
    if size < 1:
        raise ValueError("a size must be at least 1 byte")
    return size


def parse_listen(value: str) -> ListenAddress:
    """HOST:PORT with an IPv4 address, an [IPv6] address or a host name; ValueError says why."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise ValueError("the IPv6 address has no closing ]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port = value.rpartition(":")
        rest = colon + port
        if ":" in host:
            raise ValueError("an IPv6 address must be written in brackets, as [::1]:9787")
        _check_host(host)
    if not rest.startswith(":"):
        raise ValueError("no :PORT after the host")
    port = rest[1:]
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= MAX_PORT:
        raise ValueError(f"port {port!r} is not a number from 1 to {MAX_PORT}")
    return ListenAddress(host=host, port=int(port))


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("no host: name one, as 0.0.0.0 for every IPv4 interface")
    if all(c.isdigit() or c == "." for c in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        return
    labels = host.split(".")
    if len(host) > MAX_HOSTNAME_LENGTH or not all(_HOSTNAME_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"{host!r} is not a host name")


def normalize_database(value: str, base: Path) -> str:
    """A database setting as kept: an absolute path or sqlite:///PATH; ValueError for others.

    An in-memory SQLite database is refused: each process would get its own, so runs submitted
    by a command would never reach the daemon. URL options are refused too: the engine sets the
    pragmas the shared file needs itself.
    """
    if "://" not in value:
        return str(_resolve(value, base))
    scheme, _, rest = value.partition("://")
    if scheme != "sqlite":
        raise ValueError(f"{scheme}:// databases are not supported, only SQLite files")
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ValueError("an in-memory database is private to one process, so it cannot be shared")
    if "?" in rest:
        raise ValueError("options in the URL are not supported")
    return f"sqlite:///{_resolve(rest[1:], base)}"


def _check_placeholders(arg: str, reader: _Reader, key: str, allowed: frozenset[str]) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
    except ValueError as exc:
        raise reader.fail(key, f"valid placeholders ({exc})", arg) from None
    for name in fields:
        if name not in allowed:
            known = ", ".join("{" + p + "}" for p in sorted(allowed))
            raise reader.fail(key, f"only the placeholders {known}", arg)


def _apply_environment(settings: Settings, env: Mapping[str, str]) -> Settings:
    changes: dict[str, Any] = {}
    if env.get(ENV_DATABASE):
        value = env[ENV_DATABASE]
        try:
            changes["database"] = normalize_database(value, Path.cwd())
        except ValueError as exc:
            raise ConfigError(
                f"{ENV_DATABASE}: expected {DATABASE_EXPECTED}, got {value!r} ({exc})"
            ) from None
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


def _int_or(value: int | None, default: int) -> int:
    return default if value is None else value


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) or 1
