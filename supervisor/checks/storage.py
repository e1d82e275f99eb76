"""Where the database and the run directories live: writable, and on what filesystem.

File events (inotify) see only changes made through this machine's kernel, so on a network
filesystem a run's progress written elsewhere, or by the server, arrives only with the daemon's
rescan; and SQLite's WAL needs memory shared through the -shm file, which a network filesystem
does not share (SQLite's own documentation: WAL does not work over a network filesystem).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.checks.result import CheckResult, fail, ok, warn
from supervisor.db.probe import DatabaseProbe
from supervisor.settings import Settings

MOUNTINFO = Path("/proc/self/mountinfo")
# Filesystems whose files other machines may change: file events do not arrive, WAL breaks.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre",
        "gpfs", "beegfs", "panfs", "pvfs2", "orangefs", "9p", "virtiofs", "davfs",
    }
)  # fmt: skip
# FUSE filesystems are network ones (sshfs, s3fs, rclone...) except these, which are local.
LOCAL_FUSE = frozenset({"fuse.fuse-overlayfs", "fuse.lxcfs"})
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """A mount point and its filesystem type, from mountinfo."""

    point: Path
    fstype: str


@dataclass(frozen=True)
class DirState:
    """A directory as a run or the database would use it."""

    path: Path
    exists: bool
    problem: str | None  # why it cannot be written (or created), None when it can
    fstype: str | None  # of the directory, or of its nearest existing parent
    mount_point: Path | None


def parse_mounts(text: str) -> list[Mount]:
    """Every mount of a /proc/<pid>/mountinfo text, in order."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if sep and len(fields) >= 5 and tail_fields:
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            mounts.append(Mount(Path(point), tail_fields[0]))
    return mounts


def mount_of(path: Path, mounts: Sequence[Mount]) -> Mount | None:
    """The mount `path` (absolute, resolved) is on: the last one mounted at its deepest point."""
    best: Mount | None = None
    for mount in mounts:
        if path.is_relative_to(mount.point) and (
            best is None or len(mount.point.parts) >= len(best.point.parts)
        ):
            best = mount
    return best


def is_network(fstype: str | None) -> bool:
    """True for a filesystem other machines may write to (file events and WAL do not work)."""
    if fstype is None:
        return False
    if fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk.")):
        return fstype not in LOCAL_FUSE
    return fstype.split(".", 1)[0] in NETWORK_FILESYSTEMS


def read_mounts() -> list[Mount]:
    """This process's mounts ([] where /proc cannot be read)."""
    try:
        return parse_mounts(MOUNTINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def dir_state(path: Path, mounts: Sequence[Mount]) -> DirState:
    """Whether `path` exists, can be written (or created), and its filesystem."""
    # os.path's tests answer False where a folder on the way cannot be searched (no raise).
    path = Path(os.path.abspath(path))
    existing = path
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    mount = mount_of(Path(os.path.realpath(existing)), mounts)
    fstype = mount.fstype if mount else None
    point = mount.point if mount else None
    exists = os.path.isdir(path)
    if os.path.exists(path) and not exists:
        return DirState(path, False, "is not a directory", fstype, point)
    if not os.path.isdir(existing):
        return DirState(path, False, f"cannot be created: {existing} is not a directory",
                        fstype, point)  # fmt: skip
    problem = _write_problem(existing)
    if problem is not None and not exists:
        problem = f"cannot be created in {existing}: {problem}"
    return DirState(path, exists, problem, fstype, point)


def _write_problem(directory: Path) -> str | None:
    """None when a file can be made in `directory`, else why not. A real try (an unnamed
    O_TMPFILE file where the filesystem has them): permission bits say nothing to root about
    a read-only mount, and an ACL or a full disk says no where the bits say yes."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        return exc.strerror or str(exc)


def _where(state: DirState) -> str:
    return f"{state.fstype} at {state.mount_point}" if state.fstype else "filesystem unknown"


def runs_dir_check(settings: Settings, state: DirState) -> CheckResult:
    """The local runs directory: writable, and on a filesystem where file events work."""
    facts = {"path": str(state.path), "exists": state.exists, "filesystem": state.fstype}
    if state.problem is not None:
        return fail(
            "runs_dir",
            f"{state.path} {state.problem}",
            "create it writable for the daemon's user, or set runs_dir",
            **facts,
        )
    what = "exists" if state.exists else "will be created"
    detail = f"{state.path} {what}, writable ({_where(state)})"
    if is_network(state.fstype):
        every = settings.rescan_interval_seconds
        if settings.force_polling:
            return ok("runs_dir", f"{detail}; network filesystem, force_polling is on", **facts)
        return warn(
            "runs_dir",
            f"{detail}: a network filesystem, where file events do not arrive; progress is "
            f"then seen only by the rescan, every {every:g} s",
            "put runs_dir on a local disk, or set force_polling = true",
            **facts,
        )
    return ok("runs_dir", detail, **facts)


def database_check(
    settings: Settings, probe: DatabaseProbe, state: DirState, head: str
) -> CheckResult:
    """The database file: readable, in WAL mode, on a local disk, schema not newer than ours."""
    path = settings.database_path
    facts = {
        "path": str(path),
        "exists": probe.exists,
        "journal_mode": probe.journal_mode,
        "revision": probe.revision,
        "head_revision": head,
        "filesystem": state.fstype,
    }
    if is_network(state.fstype):
        return fail(
            "database",
            f"{path} is on {_where(state)}, a network filesystem: SQLite's WAL does not work "
            "there (readers and the writer would corrupt or block each other)",
            "set database to a file on a local disk",
            **facts,
        )
    if probe.error is not None:
        return fail("database", f"{path}: {probe.error}", "set database to a SQLite file",
                    **facts)  # fmt: skip
    writable = _database_writable(path, state)
    if writable is not None:
        return fail("database", f"{path}: {writable}",
                    "make it (and its folder) writable for the daemon's user", **facts)  # fmt: skip
    if not probe.exists or probe.empty:
        return ok("database", f"{path} will be created (WAL, schema {head})", **facts)
    return _schema_check(path, probe, head, facts)


def _database_writable(path: Path | None, state: DirState) -> str | None:
    # SQLite writes -wal and -shm next to the file, so the folder must be writable too.
    if state.problem is not None:
        return f"its folder {state.path} {state.problem}"
    if path is not None and path.exists() and not os.access(path, os.W_OK):
        return "not writable by this user"
    return None


def _schema_check(
    path: Path | None, probe: DatabaseProbe, head: str, facts: dict[str, object]
) -> CheckResult:
    mode = probe.journal_mode
    revision = probe.revision
    if revision is not None and revision != head and not _older(revision, head):
        return fail(
            "database",
            f"{path}: schema {revision} is newer than this runsup knows ({head})",
            "upgrade run-supervisor to the version that wrote it",
            **facts,
        )
    notes = []
    if revision is None:
        notes.append("no runsup schema yet" if not probe.has_runs_table else "original schema")
    elif revision != head:
        notes.append(f"schema {revision}, behind {head}")
    if mode != "wal":
        notes.append(f"journal mode {mode}, not wal")
    if notes:
        return warn(
            "database",
            f"{path}: {'; '.join(notes)}",
            "`runsup db upgrade` (or the daemon when it starts) brings the schema up to date and "
            "switches it to WAL; if the journal mode comes back, another program sets it",
            **facts,
        )
    return ok("database", f"{path}: WAL, schema {revision}", **facts)


def _older(revision: str, head: str) -> bool:
    return revision.isdigit() and head.isdigit() and int(revision) < int(head)
