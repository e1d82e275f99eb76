"""The run directory (SPEC section 4): its paths, and the config file in the template's format."""

from __future__ import annotations

import configparser
import io
import json
import os
from pathlib import Path
from typing import Any

from supervisor.errors import ValidationError

PROGRESS_FILENAME = "progress.jsonl"
LOGS_DIRNAME = "logs"
LOG_FILENAME = "sim.log"
# The keeper's records (pid, exit status) live here, beside the files SPEC names.
RECORD_DIRNAME = ".runsup"
INI_GENERAL_SECTION = "general_settings"
# Readable by the service's group (a GUI user), writable by nobody else.
RUN_DIR_MODE = 0o750
FILE_MODE = 0o640


def run_dir_for(runs_dir: Path, run_id: str) -> Path:
    """`<runs_dir>/<id>`; refuses an id that could point anywhere else."""
    if len(run_id) != 12 or any(c not in "0123456789abcdef" for c in run_id):
        raise ValidationError(f"run id {run_id!r} is not 12 lowercase hex characters")
    return runs_dir / run_id


def progress_path(run_dir: Path) -> Path:
    """Where the simulation appends its progress."""
    return run_dir / PROGRESS_FILENAME


def log_path(run_dir: Path) -> Path:
    """Where the simulation's stdout and stderr go."""
    return run_dir / LOGS_DIRNAME / LOG_FILENAME


def record_dir(run_dir: Path) -> Path:
    """Where the keeper writes the simulation's identity and exit status."""
    return run_dir / RECORD_DIRNAME


def config_path(run_dir: Path, config_format: str) -> Path:
    """`config.json` or `config.ini`."""
    return run_dir / f"config.{config_format}"


def render_config(config: dict[str, Any], config_format: str) -> str:
    """The run's config as the text of its config file."""
    if config_format == "json":
        return json.dumps(config, indent=2) + "\n"
    if config_format == "ini":
        return _render_ini(config)
    raise ValidationError(f"unknown config format {config_format!r}")


def _ini_value(value: Any) -> str:
    # SPEC section 2: strings as they are, other values as JSON.
    return value if isinstance(value, str) else json.dumps(value)


def _check_ini_name(name: str, section: str | None) -> None:
    # A name INI cannot carry would be read back as something else (or crash the writer).
    bad = not name or name != name.strip() or "\n" in name or "\r" in name
    if section is not None:
        bad = bad or "=" in name or ":" in name or name[0] in "#;["
    if bad:
        where = f"key {name!r} in [{section}]" if section is not None else f"section {name!r}"
        raise ValidationError(f"config {where} cannot be written to an INI file")


def _render_ini(config: dict[str, Any]) -> str:
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep keys' case
    general = {k: v for k, v in config.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in config.items() if isinstance(v, dict)}
    if general or INI_GENERAL_SECTION in sections:
        parser.add_section(INI_GENERAL_SECTION)
        merged = {**sections.pop(INI_GENERAL_SECTION, {}), **general}
        for key, value in merged.items():
            _check_ini_name(str(key), INI_GENERAL_SECTION)
            parser.set(INI_GENERAL_SECTION, str(key), _ini_value(value))
    for section, values in sections.items():
        _check_ini_name(section, None)
        if section != parser.default_section:  # [DEFAULT] always exists; add_section refuses it
            parser.add_section(section)
        for key, value in values.items():
            _check_ini_name(str(key), section)
            parser.set(section, str(key), _ini_value(value))
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def create_run_dir(run_dir: Path, config: dict[str, Any], config_format: str) -> Path:
    """Make the run directory, its logs/ and record folders, and write the config; returns its path.

    An existing directory is reused (a relaunch after a crash before anything started).
    """
    run_dir.mkdir(mode=RUN_DIR_MODE, exist_ok=True)
    (run_dir / LOGS_DIRNAME).mkdir(mode=RUN_DIR_MODE, exist_ok=True)
    record_dir(run_dir).mkdir(mode=RUN_DIR_MODE, exist_ok=True)
    target = config_path(run_dir, config_format)
    _write_file(target, render_config(config, config_format))
    return target


def _write_file(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.replace(tmp, path)
