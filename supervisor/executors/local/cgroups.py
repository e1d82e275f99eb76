"""Memory caps for local runs: one cgroup per run, under cgroup v2 or v1.

What can enforce a cap (`detect`), in this order:

- cgroup v2 whose memory controller is offered to the daemon's own cgroup (listed in its
  `cgroup.controllers`): under systemd that is a unit with `Delegate=yes`. v2 forbids a cgroup
  that hands controllers to children from holding processes itself, so `prepare` moves the
  daemon into a leaf `runsup-daemon` of its cgroup and then enables `+memory` for the children.
  A per-run cgroup gets `memory.max`, `memory.swap.max = 0` (the cap counts swap as v1's
  memsw does, so a run cannot dodge it by swapping) and `memory.oom.group = 1` (an OOM kill
  takes the whole run). v1 has no group kill: the kernel kills the largest process; the
  daemon can see `memory_report(...).oom_killed` and `kill` the rest.
- cgroup v1 with the memory controller mounted and the daemon's memory cgroup writable (root):
  `memory.limit_in_bytes` and, when swap accounting is on, `memory.memsw.limit_in_bytes`.
- none: `CapSupport.reason` says why and how to enable it; a run that asks for a cap must then
  fail to start (never run uncapped silently).

Per-run cgroups are named `runsup-<run id>` and live directly under the daemon's own cgroup
(its subtree: under systemd the unit's cgroup, which `systemctl restart` keeps while runs live
in it), so a restarted daemon finds them again by name (`leftovers`, `find`), and a run whose
daemon was started elsewhere is still found through its pid (`cgroup_of_pid`).

How the simulation gets in from its first instruction: the process that becomes the simulation
writes `0` (itself) into `RunCgroup.procs_file` before it execs, so everything the simulation
forks is born inside. The keeper stays outside: a `kill` of the cgroup (cancel, escalation)
cannot take the keeper with it, and the keeper still records the simulation's exit status (137
for SIGKILL). `enter(cgroup, pid)` moves a process from outside (tests, or a daemon that must
move an already running process); children it forked before the move stay where they were.

Only this module (with the rest of the local executor) signals cgroup members: `kill` reaches
processes that left the run's process group with setsid, which `killpg` cannot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from supervisor.errors import CapError
from supervisor.executors.local.means import detect as detect_means

log = structlog.get_logger(__name__)

PROC_ROOT = Path("/proc")
CGROUP_PREFIX = "runsup-"
# v2: the leaf the daemon moves itself into, so its own cgroup may enable +memory for children.
DAEMON_LEAF = "runsup-daemon"
_RUN_CGROUP_NAME = re.compile(r"\A" + re.escape(CGROUP_PREFIX) + r"([0-9a-f]{12})\Z")

# How long `kill` keeps sweeping before it gives up on members that will not go (D state).
KILL_TIMEOUT_SECONDS = 5.0
# Pause between two sweeps of `kill` / two tries of `remove`: SIGKILLed processes exit in
# microseconds to milliseconds, so this is short; it only bounds a busy loop.
SWEEP_INTERVAL_SECONDS = 0.005
# How long `remove` retries an EBUSY rmdir (members still exiting) before it reports False.
REMOVE_TIMEOUT_SECONDS = 1.0

HOW_TO_ENABLE = (
    "to enable memory caps, run the daemon under systemd with the shipped unit (Delegate=yes; "
    "on cgroup v1 its ExecStartPre= hands the unit's memory cgroup over), in a cgroup v2 "
    "subtree delegated to its user with the memory controller, or as root where the cgroup "
    "v1 memory controller is mounted (/sys/fs/cgroup/memory)"
)


class CgroupVersion(StrEnum):
    """Which cgroup interface enforces the caps."""

    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class CapSupport:
    """What this process can enforce: a version and the cgroup runs are made under, or why not."""

    version: CgroupVersion | None
    base: Path | None  # the daemon's own cgroup directory: per-run cgroups are its children
    mount: Path | None  # the hierarchy's mount point (to turn /proc/<pid>/cgroup into a path)
    reason: str  # where caps are enforced, or why they cannot be and how to enable them

    @property
    def enforced(self) -> bool:
        """True when a run's memory cap can be set up here."""
        return self.version is not None and self.base is not None


@dataclass(frozen=True)
class RunCgroup:
    """One run's cgroup directory."""

    version: CgroupVersion
    path: Path
    run_id: str

    @property
    def procs_file(self) -> Path:
        """Writing a pid (or `0`: the writer itself) here moves that process in."""
        return self.path / "cgroup.procs"


@dataclass(frozen=True)
class MemoryReport:
    """What a run's cgroup saw: its peak and whether the kernel's OOM killer fired in it."""

    peak_bytes: int | None  # None where the kernel does not keep a peak (v2 before Linux 5.19)
    oom_kills: int  # processes the OOM killer killed in the cgroup
    limit_bytes: int | None

    @property
    def oom_killed(self) -> bool:
        """True when the cap was enforced by killing a process."""
        return self.oom_kills > 0


# -- parsing (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    root: str  # the mounted subtree's path inside its hierarchy (4th field of mountinfo)
    point: Path
    fstype: str
    options: frozenset[str]  # super options: the v1 controllers of the hierarchy


def _unescape_mount_path(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[_Mount]:
    """The cgroup and cgroup2 mounts of a /proc/<pid>/mountinfo text."""
    mounts: list[_Mount] = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(tail_fields) < 3:
            continue
        if tail_fields[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            _Mount(
                root=_unescape_mount_path(fields[3]),
                point=Path(_unescape_mount_path(fields[4])),
                fstype=tail_fields[0],
                options=frozenset(tail_fields[2].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of a /proc/<pid>/cgroup text; None where there is none."""
    v2: str | None = None
    memory: str | None = None
    for line in text.splitlines():
        hierarchy, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2):
            continue
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            memory = path
    return v2, memory


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (`key value` lines: memory.events, memory.oom_control)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def parse_limit(text: str) -> int | None:
    """A limit file's value in bytes; None for "max" (v2) or v1's "unlimited" page-counter."""
    value = text.strip()
    if value == "max":
        return None
    number = int(value)
    # v1 reports "no limit" as PAGE_COUNTER_MAX pages rounded to bytes, about 2**63.
    return None if number >= 2**62 else number


def run_id_of(name: str) -> str | None:
    """The run id in a per-run cgroup's directory name, or None if it is not one of ours."""
    match = _RUN_CGROUP_NAME.match(name)
    return match.group(1) if match else None


def cgroup_name(run_id: str) -> str:
    """The directory name of a run's cgroup."""
    if not re.fullmatch(r"[0-9a-f]{12}", run_id):
        raise CapError(f"not a run id for a cgroup name: {run_id!r}")
    return CGROUP_PREFIX + run_id


def _mount_path(mount: _Mount, path: str) -> Path | None:
    """The directory of cgroup `path` (as /proc/<pid>/cgroup gives it) under `mount`."""
    root = mount.root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None  # the process's cgroup is outside the mounted subtree
    return mount.point / path[len(root) :].lstrip("/")


# -- detection ----------------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii", errors="replace")


def _memory_bound_to_v1(proc: Path) -> bool:
    """True when /proc/cgroups shows the memory controller attached to a v1 hierarchy."""
    try:
        lines = _read(proc / "cgroups").splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "memory":
            return fields[1] != "0"
    return False


def _detect_v2(mounts: list[_Mount], own: str | None, proc: Path) -> CapSupport | str:
    """v2 support, or a sentence saying why not."""
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or own is None:
        return "no cgroup v2 hierarchy is mounted"
    base = _mount_path(mount, own)
    if base is None:
        return f"this process's cgroup {own} is outside the cgroup v2 mount at {mount.point}"
    if base.name == DAEMON_LEAF:
        base = base.parent
    try:
        offered = _read(base / "cgroup.controllers").split()
        enabled = _read(base / "cgroup.subtree_control").split()
        members = _read(base / "cgroup.procs").split()
    except OSError as exc:
        return f"cannot read the cgroup v2 directory {base}: {exc.strerror}"
    if "memory" not in offered:
        why = (
            "the memory controller is bound to a cgroup v1 hierarchy"
            if _memory_bound_to_v1(proc)
            else "it is not delegated to this cgroup"
        )
        return f"cgroup v2 at {mount.point} offers no memory controller to {base} ({why})"
    if not os.access(base / "cgroup.subtree_control", os.W_OK) or not os.access(base, os.W_OK):
        return f"the cgroup v2 directory {base} is not writable by uid {os.geteuid()}"
    if "memory" not in enabled and [p for p in members if p != str(os.getpid())]:
        return (
            f"the cgroup v2 directory {base} holds other processes, so the memory controller "
            "cannot be enabled for its children"
        )
    return CapSupport(CgroupVersion.V2, base, mount.point, f"cgroup v2 memory controller at {base}")


def _detect_v1(mounts: list[_Mount], own: str | None) -> CapSupport | str:
    """v1 support, or a sentence saying why not."""
    mount = next((m for m in mounts if m.fstype == "cgroup" and "memory" in m.options), None)
    if mount is None or own is None:
        return "no cgroup v1 memory hierarchy is mounted"
    base = _mount_path(mount, own)
    if base is None:
        return f"this process's memory cgroup {own} is outside the mount at {mount.point}"
    if not (base / "memory.limit_in_bytes").exists():
        return f"{base} is not a cgroup v1 memory directory"
    if not os.access(base, os.W_OK):
        return f"the cgroup v1 memory directory {base} is not writable by uid {os.geteuid()}"
    return CapSupport(CgroupVersion.V1, base, mount.point, f"cgroup v1 memory controller at {base}")


def detect(proc: Path = PROC_ROOT) -> CapSupport:
    """What can cap a run's memory for the process this runs in (v2, else v1, else why not)."""
    try:
        mounts = parse_mountinfo(_read(proc / "self" / "mountinfo"))
        v2_path, memory_path = parse_proc_cgroup(_read(proc / "self" / "cgroup"))
    except OSError as exc:
        return CapSupport(None, None, None, f"cannot read /proc: {exc}; {HOW_TO_ENABLE}")
    v2 = _detect_v2(mounts, v2_path, proc)
    if isinstance(v2, CapSupport):
        return v2
    v1 = _detect_v1(mounts, memory_path)
    if isinstance(v1, CapSupport):
        # Keep why v2 was passed over: `runsup check` shows it.
        return CapSupport(v1.version, v1.base, v1.mount, f"{v1.reason} (not cgroup v2: {v2})")
    reason = f"memory caps cannot be enforced here: {v2}; {v1}; {HOW_TO_ENABLE}"
    log.debug("cgroup_caps_unavailable", reason=reason)
    return CapSupport(None, None, None, reason)


def prepare(support: CapSupport) -> CapSupport:
    """Make the daemon's cgroup ready for per-run children (v2: leaf + `+memory`), once at start.

    Returns `support` unchanged when ready, else a support without a version saying why.
    """
    if support.version is not CgroupVersion.V2 or support.base is None:
        return support
    base = support.base
    try:
        if "memory" not in _read(base / "cgroup.subtree_control").split():
            leaf = base / DAEMON_LEAF
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n", encoding="ascii")
            (base / "cgroup.subtree_control").write_text("+memory\n", encoding="ascii")
    except OSError as exc:
        reason = (
            f"memory caps cannot be enforced here: enabling the memory controller under {base} "
            f"failed: {exc.strerror}; {HOW_TO_ENABLE}"
        )
        return CapSupport(None, None, None, reason)
    log.info("cgroup_caps_ready", version=str(support.version), base=str(base))
    return support


# -- one run's cgroup ---------------------------------------------------------------------------


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(value)


def _require(support: CapSupport) -> tuple[CgroupVersion, Path]:
    if support.version is None or support.base is None:
        raise CapError(support.reason)
    return support.version, support.base


def _set_cap(cgroup: RunCgroup, memory_max: int) -> None:
    if cgroup.version is CgroupVersion.V2:
        _write(cgroup.path / "memory.max", str(memory_max))
        if (cgroup.path / "memory.swap.max").exists():
            _write(cgroup.path / "memory.swap.max", "0")
        # Past the cap the whole run dies, not just its largest process (SPEC: "the run is
        # killed"); the keeper is outside the cgroup, so it survives to record the status.
        if (cgroup.path / "memory.oom.group").exists():
            _write(cgroup.path / "memory.oom.group", "1")
        return
    # A new memcg inherits oom_kill_disable from its parent: a disabled OOM killer would freeze
    # the run at its cap instead of ending it.
    _write(cgroup.path / "memory.oom_control", "0")
    # memsw (memory + swap) must stay >= the memory limit: a fresh cgroup has both unlimited,
    # so the memory limit goes first.
    _write(cgroup.path / "memory.limit_in_bytes", str(memory_max))
    if (cgroup.path / "memory.memsw.limit_in_bytes").exists():
        _write(cgroup.path / "memory.memsw.limit_in_bytes", str(memory_max))


def create(support: CapSupport, run_id: str, memory_max: int) -> RunCgroup:
    """Make the run's cgroup with its cap (a leftover empty one of the same name is replaced)."""
    version, base = _require(support)
    if memory_max <= 0:
        raise CapError(f"a memory cap must be positive, not {memory_max}")
    cgroup = RunCgroup(version, base / cgroup_name(run_id), run_id)
    if cgroup.path.exists() and not remove(cgroup, timeout=0.0):
        raise CapError(f"the cgroup {cgroup.path} already holds processes")
    try:
        cgroup.path.mkdir()
        _set_cap(cgroup, memory_max)
    except OSError as exc:
        with contextlib.suppress(OSError):
            cgroup.path.rmdir()
        raise CapError(f"cannot set up the memory cgroup {cgroup.path}: {exc.strerror}") from None
    log.debug("cgroup_created", run_id=run_id, path=str(cgroup.path), memory_max=memory_max)
    return cgroup


def enter(cgroup: RunCgroup, pid: int) -> None:
    """Move process `pid` (0: the caller) into the run's cgroup; its later children follow."""
    try:
        _write(cgroup.procs_file, f"{pid}\n")
    except OSError as exc:
        raise CapError(f"cannot move process {pid} into {cgroup.path}: {exc.strerror}") from None


def members(cgroup: RunCgroup) -> list[int]:
    """The pids in the cgroup now (exited processes are not listed); [] once it is gone."""
    try:
        text = _read(cgroup.procs_file)
    except FileNotFoundError:
        return []
    return [int(field) for field in text.split()]


def populated(cgroup: RunCgroup) -> bool:
    """True while any process lives in the cgroup."""
    if cgroup.version is CgroupVersion.V2:
        try:
            return parse_keyed(_read(cgroup.path / "cgroup.events")).get("populated", 0) == 1
        except FileNotFoundError:
            return False
    return bool(members(cgroup))


def ensure_cap(cgroup: RunCgroup, memory_max: int) -> bool:
    """Set the run's cap again if its cgroup lost it (True then), for an adopting daemon.

    systemd before 254 resets a delegated unit's cgroup.subtree_control when it restarts the
    unit: on cgroup v2 that turns the memory controller off under the runs' cgroups, and
    when the new daemon turns it on again (`prepare`) they come back with no limit.
    """
    limit_file = "memory.max" if cgroup.version is CgroupVersion.V2 else "memory.limit_in_bytes"
    try:
        limit = parse_limit(_read(cgroup.path / limit_file))
    except (OSError, ValueError) as exc:
        raise CapError(f"cannot read the cap of {cgroup.path}: {exc}") from None
    if limit is not None:
        return False  # the kernel rounds to pages: any limit is the one we set
    try:
        _set_cap(cgroup, memory_max)
    except OSError as exc:
        raise CapError(f"cannot set the cap of {cgroup.path} again: {exc.strerror}") from None
    log.warning("cgroup_cap_restored", run_id=cgroup.run_id, memory_max=memory_max)
    return True


def memory_report(cgroup: RunCgroup) -> MemoryReport:
    """The cgroup's peak and OOM kills; read it after the run ended and before `remove`."""
    path = cgroup.path
    try:
        if cgroup.version is CgroupVersion.V2:
            peak_file = path / "memory.peak"
            peak = int(_read(peak_file)) if peak_file.exists() else None
            events = parse_keyed(_read(path / "memory.events"))
            limit = parse_limit(_read(path / "memory.max"))
            return MemoryReport(peak, events.get("oom_kill", 0), limit)
        memsw = path / "memory.memsw.max_usage_in_bytes"
        # The peak of what the cap counts: memory + swap when swap is accounted.
        peak_file = memsw if memsw.exists() else path / "memory.max_usage_in_bytes"
        oom = parse_keyed(_read(path / "memory.oom_control"))
        # `oom_kill` exists since Linux 4.13; before it, `under_oom` is the best there is.
        kills = oom.get("oom_kill", oom.get("under_oom", 0))
        limit = parse_limit(_read(path / "memory.limit_in_bytes"))
        return MemoryReport(int(_read(peak_file)), kills, limit)
    except (OSError, ValueError) as exc:
        raise CapError(f"cannot read the memory figures of {path}: {exc}") from None


def _pidfds(pids: Iterable[int]) -> dict[int, int]:
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
    return fds


def signal_members(cgroup: RunCgroup, signum: int = signal.SIGKILL) -> int:
    """Send `signum` once to every process in the cgroup; how many were signalled.

    A pid is signalled through a pidfd opened before the second read of the member list, so a
    pid that was reused by a process outside the cgroup in between is never signalled.
    Without pidfds (Linux before 5.3) a pid is signalled only if its start time read before
    the second read of the list is still its start time.
    """
    if not detect_means().pidfds:
        return _signal_members_by_pid(cgroup, signum)
    fds = _pidfds(members(cgroup))
    try:
        still = set(members(cgroup))
        sent = 0
        for pid, fd in fds.items():
            if pid not in still:
                continue
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)
                sent += 1
        return sent
    finally:
        for fd in fds.values():
            os.close(fd)


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return int(fh.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _signal_members_by_pid(cgroup: RunCgroup, signum: int) -> int:
    started = {pid: _start_ticks(pid) for pid in members(cgroup)}
    still = set(members(cgroup))
    sent = 0
    for pid, ticks in started.items():
        if ticks is None or pid not in still or _start_ticks(pid) != ticks:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
            sent += 1
    return sent


def kill(cgroup: RunCgroup, timeout: float = KILL_TIMEOUT_SECONDS) -> bool:
    """SIGKILL every process in the cgroup, setsid escapees included; True once it is empty.

    v2 uses `cgroup.kill` (atomic, also against forks); v1 sweeps the member list until a sweep
    finds it empty, which also catches children forked during a sweep.
    """
    kill_file = cgroup.path / "cgroup.kill"
    deadline = time.monotonic() + timeout
    while True:
        if cgroup.version is CgroupVersion.V2 and kill_file.exists():
            with contextlib.suppress(FileNotFoundError):
                _write(kill_file, "1")
        else:
            signal_members(cgroup)
        if not populated(cgroup):
            return True
        if time.monotonic() >= deadline:
            log.warning("cgroup_kill_incomplete", run_id=cgroup.run_id, members=members(cgroup))
            return False
        time.sleep(SWEEP_INTERVAL_SECONDS)


def kill_and_remove_aside(cgroup: RunCgroup) -> None:
    """SIGKILL the cgroup's members now and remove it once empty; what does not empty at once
    (members in D state behind a hung filesystem) is waited for on a thread of its own, never
    on the caller's (the daemon's loop)."""
    if kill(cgroup, timeout=0.0):
        with contextlib.suppress(CapError):
            remove(cgroup, 0.0)
        return

    def finish() -> None:
        try:
            if kill(cgroup):
                remove(cgroup)
        except (CapError, OSError) as exc:
            log.warning("cgroup_left_behind", run_id=cgroup.run_id, error=str(exc))

    threading.Thread(target=finish, name=f"cgroup-kill-{cgroup.run_id}", daemon=True).start()


def remove(cgroup: RunCgroup, timeout: float = REMOVE_TIMEOUT_SECONDS) -> bool:
    """Remove the cgroup once it is empty; False if processes still live in it after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cgroup.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CapError(f"cannot remove the cgroup {cgroup.path}: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                return False
            time.sleep(SWEEP_INTERVAL_SECONDS)
        else:
            log.debug("cgroup_removed", run_id=cgroup.run_id, path=str(cgroup.path))
            return True


# -- after a restart ----------------------------------------------------------------------------


def leftovers(support: CapSupport) -> list[RunCgroup]:
    """Every per-run cgroup under the daemon's cgroup, by name (for a restarted daemon)."""
    if support.version is None or support.base is None:
        return []
    found: list[RunCgroup] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(support.base.iterdir()):
            run_id = run_id_of(entry.name)
            if run_id is not None and entry.is_dir():
                found.append(RunCgroup(support.version, entry, run_id))
    return found


def find(support: CapSupport, run_id: str) -> RunCgroup | None:
    """The run's cgroup under the daemon's cgroup, if it exists."""
    version, base = _require(support)
    path = base / cgroup_name(run_id)
    return RunCgroup(version, path, run_id) if path.is_dir() else None


def cgroup_of_pid(support: CapSupport, pid: int, proc: Path = PROC_ROOT) -> RunCgroup | None:
    """The per-run cgroup process `pid` is in, wherever it was made; None if it is in none."""
    if support.version is None or support.mount is None:
        return None
    try:
        v2_path, memory_path = parse_proc_cgroup(_read(proc / str(pid) / "cgroup"))
        mounts = parse_mountinfo(_read(proc / "self" / "mountinfo"))
    except OSError:
        return None
    path = v2_path if support.version is CgroupVersion.V2 else memory_path
    mount = next((m for m in mounts if m.point == support.mount), None)
    if path is None or mount is None:
        return None
    directory = _mount_path(mount, path)
    run_id = run_id_of(directory.name) if directory is not None else None
    if directory is None or run_id is None:
        return None
    return RunCgroup(support.version, directory, run_id)
