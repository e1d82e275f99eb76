"""The run directory (SPEC section 4): its paths, and the config file in the template's format."""

from __future__ import annotations

import configparser
import errno
import io
import json
import os
import stat
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
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at the name fails (ENXIO) instead of blocking the daemon.
_NEW_FILE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)


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

    An existing directory is reused (a relaunch after a crash before anything started), but only
    a plain directory of this user's: a symlink or anything else planted at one of these paths
    is refused (ValidationError), never followed. Everything is opened relative to the run
    directory's descriptor, so nothing swapped in meanwhile redirects a write. Modes are set
    exactly (RUN_DIR_MODE, FILE_MODE), whatever the umask: the service's group can read.
    """
    try:
        content = render_config(config, config_format).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"config cannot be written as UTF-8 text: {exc}") from None
    target = config_path(run_dir, config_format)
    top = _make_dir(run_dir)
    try:
        for sub in (LOGS_DIRNAME, RECORD_DIRNAME):
            _make_subdir(run_dir / sub, top)
        _write_file(top, target.name, content)
    finally:
        os.close(top)
    return target


def _make_dir(path: Path, parent_fd: int | None = None) -> int:
    """mkdir (or reuse) a plain directory of ours at `path`; returns an open descriptor of it."""
    name: str | Path = path.name if parent_fd is not None else path
    created = _mkdir(name, parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ValidationError(f"{path} {_what_is_there(name, parent_fd)}") from None
        raise
    if not created:  # there before: check that it is ours
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise ValidationError(
                f"{path} belongs to uid {st.st_uid}, not to the supervisor (uid {os.geteuid()})"
            )
    os.fchmod(fd, RUN_DIR_MODE)
    return fd


def _make_subdir(path: Path, parent_fd: int) -> None:
    """As _make_dir, for a folder inside one we hold open; a new one needs no descriptor."""
    if _mkdir(path.name, parent_fd):
        # Just made by us in our own folder: nobody else can have swapped it (mode fixed up
        # whatever the umask).
        os.chmod(path.name, RUN_DIR_MODE, dir_fd=parent_fd)
    else:
        os.close(_make_dir(path, parent_fd))


def _mkdir(name: str | Path, parent_fd: int | None) -> bool:
    """mkdir; True if it made the directory, False if something was there already."""
    try:
        os.mkdir(name, RUN_DIR_MODE, dir_fd=parent_fd)
    except FileExistsError:
        return False
    return True


def _what_is_there(name: str | Path, parent_fd: int | None) -> str:
    try:
        st = os.lstat(name, dir_fd=parent_fd)
    except OSError:
        return "is not a directory"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link, not a directory: refusing to follow it"
    return f"exists and is not a directory ({stat.filemode(st.st_mode)})"


def _write_file(dir_fd: int, name: str, content: bytes) -> None:
    tmp = name + ".tmp"
    fd = os.open(tmp, _NEW_FILE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
