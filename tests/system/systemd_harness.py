"""Boot a real systemd as PID 1 in private namespaces, isolated from the machine.

Left to itself, a systemd booted on the machine's unit files starts the
machine's services, and systemd-tmpfiles-setup (pulled in by basic.target)
empties the machine's /tmp. So systemd is only ever started here after the
setup script has, inside new PID, mount, UTS, IPC, network and cgroup
namespaces:

- mounted private tmpfs on /run, /var/lib, /var/log, /var/cache, /tmp, /var/tmp;
- replaced /dev with a tmpfs holding only null, zero, full, random, urandom,
  tty, a private devpts and /dev/console (a pty copied to console.log);
- mounted a cgroup2 hierarchy rooted at a cgroup of our own (cgroup namespace);
  or, with v1_memory=True, the hybrid layout of a cgroup v1 host: a tmpfs on /sys/fs/cgroup
  with that cgroup2 on unified/, and the v1 name=systemd and memory hierarchies rooted at
  cgroups of our own (systemd then runs in hybrid mode and puts units in the v1 memory
  hierarchy too); a copy of /proc/cgroups with every other controller disabled is bound
  over it, so systemd mounts and populates no other v1 hierarchy of the machine;
- optionally bound a host directory read-only over /opt (where an installed venv lives);
- made /, /sys and /proc/sys read-only;
- checked all of that, refusing to start systemd otherwise.

systemd then sees only the test's unit files (and drop-ins) and stub targets
(SYSTEMD_UNIT_PATH), no generators, and boots a stub target; optionally with a
journald of its own (its journal lives in the private /run), so `journalctl`
works inside. Teardown kills
its PID 1 by pid, which ends every process of the PID namespace, then kills
whatever is left in its cgroup and removes the cgroup.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tty
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from marker import marker_env

SYSTEMD_BINARY = Path("/usr/lib/systemd/systemd")
JOURNALD_BINARY = Path("/usr/lib/systemd/systemd-journald")
REQUIRED_TOOLS = ("unshare", "nsenter", "mount", "umount", "mknod", "stat", "readlink", "env")
INNER_DIR = "/run/harness"
"""Where the harness's host work directory appears inside the namespace."""
UNITS_SUBDIR = "units"
EMPTY_SUBDIR = "empty"
CONSOLE_LOG = "console.log"
BOOT_TARGET = "harness-boot.target"
STUB_TARGETS = ("sysinit.target", "basic.target", "shutdown.target", "multi-user.target")
"""Stand-ins for the targets default dependencies name, pulling in nothing."""
CGROUP_PREFIX = "runsup-harness-"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

FIRST_ACCOUNT_ID = 900
"""uid and gid of the first account added for the test (the next free one from there)."""

BOOT_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 30.0
TEARDOWN_TIMEOUT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 10.0
CONSOLE_READ_BYTES = 65536
POLL_SECONDS = 0.05
BOOTED_STATES = frozenset({"running", "degraded"})

UNSHARE_FLAGS = (
    "--pid",
    "--fork",
    "--kill-child=SIGKILL",
    "--mount",
    "--mount-proc",
    "--propagation=private",
    "--uts",
    "--ipc",
    "--net",
)
NSENTER_FLAGS = ("--mount", "--pid", "--uts", "--ipc", "--net", "--cgroup", "--wd=/")

# Runs as PID 1 of the new namespaces with arguments: host work dir, host mount namespace,
# INNER_DIR, boot target, PATH, console pty, host cgroup, host directory for /opt (or "").
# It first moves itself into the harness cgroup and re-executes itself in a cgroup
# namespace rooted there, so that only the namespace's processes (not unshare's parent)
# live in that cgroup. systemd logs only to a terminal, so /dev/console is a pty whose
# other end the harness copies into console.log. Every step is fatal (set -e); systemd is
# exec'd only after the final checks.
SETUP_SH = r"""
set -eu
W="$1"; HOST_MNT_NS="$2"; INNER="$3"; TARGET="$4"; CONSOLE_PTY="$6"; CGROUP="$7"; OPT="$8"
V1_MEMORY="${9:-}"; V1_SYSTEMD="${10:-}"
fail() { echo "harness setup: $*" >&2; exit 90; }
[ "$$" = 1 ] || fail "not PID 1 of a new PID namespace"
if [ -z "${HARNESS_IN_CGROUPNS:-}" ]; then
  echo 0 > "$CGROUP/cgroup.procs"
  if [ -n "$V1_MEMORY" ]; then
    echo 0 > "$V1_MEMORY/cgroup.procs"
    echo 0 > "$V1_SYSTEMD/cgroup.procs"
  fi
  HARNESS_IN_CGROUPNS=1 exec unshare --cgroup -- /bin/sh -c "$HARNESS_SETUP" harness-setup "$@"
fi
[ "$(readlink /proc/self/ns/mnt)" != "$HOST_MNT_NS" ] || fail "still in the host mount namespace"
mount --make-rprivate /
# Before the private /var/cache and /tmp hide where OPT may live on the host.
if [ -n "$OPT" ]; then
  [ -d /opt ] || fail "no /opt to mount $OPT on"
  mount --bind "$OPT" /opt
  mount -o remount,bind,ro /opt
fi
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p "$INNER"
mount --bind "$W" "$INNER"
for d in /var/lib /var/log /var/cache; do mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$d"; done
for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$d"; done
: > /run/console
mount --bind "$CONSOLE_PTY" /run/console
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
mknod -m 666 /dev/tty c 5 0
mkdir -m 0755 /dev/pts
mkdir -m 1777 /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s pts/ptmx /dev/ptmx
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
: > /dev/console
mount --bind /run/console /dev/console
umount /run/console
rm /run/console
for f in passwd group; do
  if [ -f "$INNER/etc/$f" ]; then mount --bind "$INNER/etc/$f" "/etc/$f"; fi
done
mount -o remount,bind,ro /sys
umount -R /sys/fs/cgroup 2>/dev/null || true
if [ -n "$V1_MEMORY" ]; then
  mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
  mkdir /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup/memory
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
  mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
  mount -t cgroup -o nosuid,nodev,noexec,memory cgroup /sys/fs/cgroup/memory
  mount --bind "$INNER/proc-cgroups" /proc/cgroups
else
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
fi
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount -o remount,bind,ro /
for d in /run /var/lib /var/log /var/cache /tmp /var/tmp /dev /sys/fs/cgroup; do
  t="$(stat -f -c %T "$d")"
  case "$d:$t" in
    /sys/fs/cgroup:cgroup2fs|/sys/fs/cgroup:cgroup2) [ -z "$V1_MEMORY" ] || fail "$d is $t" ;;
    /sys/fs/cgroup:tmpfs) [ -n "$V1_MEMORY" ] || fail "$d is $t, not a private cgroup2" ;;
    /sys/fs/cgroup:*) fail "$d is $t, not a private cgroup2" ;;
    *:tmpfs) ;;
    *) fail "$d is $t, not a private tmpfs" ;;
  esac
done
grep -qx '0::/' /proc/self/cgroup || fail "not at the root of a private cgroup namespace"
if [ -n "$V1_MEMORY" ]; then
  [ "$(stat -f -c %T /sys/fs/cgroup/unified)" = cgroup2fs ] || fail "unified/ is no cgroup2"
  grep -qx '[0-9]*:memory:/' /proc/self/cgroup || fail "not at the root of the memory hierarchy"
  grep -q '^memory' /proc/cgroups || fail "/proc/cgroups lists no memory controller"
fi
touch /harness-ro-probe 2>/dev/null && fail "the root filesystem is writable"
[ -z "$(ls -A "$INNER/empty")" ] || fail "the generator directory is not empty"
exec env -i container=runsup-harness PATH="$5" LANG=C.UTF-8 \
  SYSTEMD_UNIT_PATH="$INNER/units" \
  SYSTEMD_GENERATOR_PATH="$INNER/empty" \
  SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$INNER/empty" \
  /usr/lib/systemd/systemd --system --unit="$TARGET" \
  --log-target=console --log-color=no --show-status=no
"""

STUB_UNIT = "[Unit]\nDescription=harness stub {name}\n"
BOOT_UNIT = "[Unit]\nDescription=harness boot target\n"
JOURNALD_UNITS = {
    # The machine's socket unit, minus what a private /run has no use for.
    "systemd-journald.socket": """[Unit]
Description=harness journal socket
DefaultDependencies=no

[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
ReceiveBuffer=8M
Service=systemd-journald.service
SocketMode=0666
Timestamping=us
""",
    "systemd-journald.service": f"""[Unit]
Description=harness journal service
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket

[Service]
Type=notify
ExecStart={JOURNALD_BINARY}
Sockets=systemd-journald.socket
RuntimeDirectory=systemd/journal
RuntimeDirectoryPreserve=yes
FileDescriptorStoreMax=4224
StandardOutput=null
""",
}
JOURNALD_BOOT_UNIT = (
    "[Unit]\nDescription=harness boot target with journald\n"
    "Wants=systemd-journald.socket systemd-journald.service\n"
    "After=systemd-journald.socket systemd-journald.service\n"
)


class HarnessError(RuntimeError):
    """The namespace could not be booted or torn down."""


@dataclass
class SystemdNamespace:
    """A systemd booted as PID 1 of its own namespaces."""

    pid: int
    """Host pid of the namespace's PID 1 (systemd)."""
    workdir: Path
    """Host directory seen as INNER_DIR inside the namespace."""
    cgroup: Path
    """Host path of the cgroup holding every process of the namespace."""
    _launcher: subprocess.Popen[bytes] = field(repr=False)

    @property
    def inner_dir(self) -> str:
        """Where workdir appears inside the namespace."""
        return INNER_DIR

    def run(
        self, *cmd: str, timeout: float = COMMAND_TIMEOUT_SECONDS, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd inside the namespace (nsenter into its mount, PID and other namespaces)."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", *NSENTER_FLAGS, "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=_inner_env(),
        )

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        """Start cmd inside the namespace without waiting (stdin and stdout are pipes).

        Teardown ends it with the rest of the namespace; the caller may end it before.
        """
        return subprocess.Popen(
            ["nsenter", f"--target={self.pid}", *NSENTER_FLAGS, "--", *cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_inner_env(),
        )

    def systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run systemctl against the namespace's systemd."""
        return self.run("systemctl", "--no-pager", "--no-ask-password", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """Properties of a unit, from systemctl show."""
        result = self.systemctl("show", unit, "-p", ",".join(properties), check=True)
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def console(self) -> str:
        """What systemd wrote to its console so far."""
        return (self.workdir / CONSOLE_LOG).read_text(errors="replace")

    def alive(self) -> bool:
        """True while the namespace's PID 1 is running."""
        return self._launcher.poll() is None


class _ConsolePump:
    """A pty standing in for /dev/console; a thread appends what arrives to a log file."""

    def __init__(self, log_path: Path) -> None:
        """Open the pty (raw, so no CR are added) and start copying."""
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.slave_path = os.ttyname(self._slave)
        self._log = log_path.open("ab", buffering=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="harness-console", daemon=True)
        self._thread.start()

    def _copy_available(self, wait: float) -> bool:
        """Copy what the pty holds within wait seconds; False when there was nothing."""
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.master, CONSOLE_READ_BYTES)
        except OSError:
            return False
        self._log.write(data)
        return bool(data)

    def _pump(self) -> None:
        """Copy until told to stop."""
        while not self._stop.is_set():
            self._copy_available(POLL_SECONDS)

    def close(self) -> None:
        """Stop the thread, copy what is left, close everything."""
        self._stop.set()
        self._thread.join(TEARDOWN_TIMEOUT_SECONDS)
        while self._copy_available(0):
            pass
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()


@functools.cache
def skip_reason() -> str | None:
    """Why a namespace-booted systemd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (unshare, mount and a systemd PID 1)"
    if not SYSTEMD_BINARY.exists():
        return f"systemd is not installed ({SYSTEMD_BINARY} missing; apt-get install systemd)"
    missing = [tool for tool in (*REQUIRED_TOOLS, "systemctl") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if cgroup2_root() is None:
        return "no cgroup2 hierarchy mounted"
    probe = subprocess.run(
        ["unshare", *UNSHARE_FLAGS, "--cgroup", "--", "true"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare refused the namespaces: {probe.stderr.strip()}"
    return None


def cgroup2_root() -> Path | None:
    """Mount point of the machine's cgroup2 hierarchy (unified or hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return Path(before.split(" ")[4])
    return None


def _inner_env() -> dict[str, str]:
    """A small, fixed environment for commands run in the namespace."""
    env = {"PATH": INNER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    return {**env, **marker_env()}  # the suite's leak check finds what it started


def _unit_file_path(units: Path, name: str) -> Path:
    """Where a unit file (`foo.service`) or a drop-in (`foo.service.d/bar.conf`) goes."""
    parts = name.split("/")
    ok = (
        all(parts)
        and ".." not in parts
        and (len(parts) == 1 or (len(parts) == 2 and parts[0].endswith(".d")))
    )
    if not ok:
        raise HarnessError(f"bad unit file name {name!r}")
    return units.joinpath(*parts)


def _write_workdir(
    workdir: Path,
    unit_files: Mapping[str, str],
    users: Sequence[str],
    members: Mapping[str, Sequence[str]],
    *,
    journald: bool,
) -> None:
    """Lay out the unit directory, the empty generator directory and the console log."""
    units = workdir / UNITS_SUBDIR
    units.mkdir()
    (workdir / EMPTY_SUBDIR).mkdir()
    (workdir / CONSOLE_LOG).touch()
    (units / BOOT_TARGET).write_text(JOURNALD_BOOT_UNIT if journald else BOOT_UNIT)
    for name in STUB_TARGETS:
        (units / name).write_text(STUB_UNIT.format(name=name))
    for name, text in {**(JOURNALD_UNITS if journald else {}), **unit_files}.items():
        path = _unit_file_path(units, name)
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    if users or members:
        _write_accounts(workdir / "etc", users, members)
    workdir.chmod(0o755)


def _write_accounts(etc: Path, users: Sequence[str], members: Mapping[str, Sequence[str]]) -> None:
    """Copies of /etc/passwd and /etc/group with accounts added, bound over the originals.

    Each user gets a group of its own name; members adds users to groups (supplementary).
    """
    etc.mkdir()
    passwd = Path("/etc/passwd").read_text()
    group_lines = Path("/etc/group").read_text().splitlines()
    taken = {
        int(line.split(":")[2])
        for line in [*passwd.splitlines(), *group_lines]
        if line.count(":") >= 3
    }
    next_id = FIRST_ACCOUNT_ID
    for user in users:
        while next_id in taken:
            next_id += 1
        taken.add(next_id)
        passwd += f"{user}:x:{next_id}:{next_id}::/var/lib/{user}:/usr/sbin/nologin\n"
        group_lines.append(f"{user}:x:{next_id}:")
    for name, extra in members.items():
        for index, line in enumerate(group_lines):
            fields = line.split(":")
            if len(fields) == 4 and fields[0] == name:
                present = [m for m in fields[3].split(",") if m]
                fields[3] = ",".join([*present, *(m for m in extra if m not in present)])
                group_lines[index] = ":".join(fields)
                break
        else:
            raise HarnessError(f"members: no group {name!r}")
    (etc / "passwd").write_text(passwd)
    (etc / "group").write_text("\n".join(group_lines) + "\n")


def _child_of(parent: int) -> int | None:
    """The first process whose parent is parent, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent:
            return int(entry.name)
    return None


def _v1_hierarchy(option: str) -> Path | None:
    """The directory of this process's cgroup in the v1 hierarchy mounted with `option`."""
    mount: tuple[str, Path] | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(" "), after.split(" ")
        if tail[0] == "cgroup" and option in tail[2].split(","):
            mount = (fields[3], Path(fields[4]))
            break
    if mount is None:
        return None
    root, point = mount
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if option in controllers.split(","):
            return point / path[len(root.rstrip("/")) :].lstrip("/")
    return None


def v1_memory_skip_reason() -> str | None:
    """Why booted_systemd(v1_memory=True) cannot run here, or None when it can."""
    reason = skip_reason()
    if reason is not None:
        return reason
    for option in ("memory", "name=systemd"):
        found = _v1_hierarchy(option)
        if found is None or not os.access(found, os.W_OK):
            return f"no writable cgroup v1 hierarchy {option} is mounted"
    return None


def _proc_cgroups_memory_only() -> str:
    """/proc/cgroups with every controller but memory marked disabled."""
    lines = []
    for line in Path("/proc/cgroups").read_text().splitlines():
        fields = line.split("\t")
        if not line.startswith("#") and len(fields) == 4 and fields[0] != "memory":
            fields[3] = "0"
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def _cgroup_pids(cgroup: Path) -> list[int]:
    """Every pid in cgroup and below."""
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in procs.read_text().split())
    return pids


def _kill_cgroup(cgroup: Path) -> None:
    """SIGKILL everything left in cgroup, wait for it to empty, remove it."""
    if not cgroup.exists():
        return
    kill_file = cgroup / "cgroup.kill"
    deadline = time.monotonic() + TEARDOWN_TIMEOUT_SECONDS
    while pids := _cgroup_pids(cgroup):
        if kill_file.exists():
            kill_file.write_text("1")
        else:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HarnessError(f"processes {pids} survive in {cgroup}")
        time.sleep(POLL_SECONDS)
    for path in sorted((p for p in cgroup.rglob("*") if p.is_dir()), reverse=True):
        path.rmdir()
    cgroup.rmdir()


def _wait_booted(ns: SystemdNamespace, timeout: float) -> None:
    """Wait until systemctl answers and the boot target is reached."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        if not ns.alive():
            raise HarnessError(f"systemd exited during boot:\n{ns.console()}")
        result = ns.run("systemctl", "is-system-running", timeout=timeout)
        state = result.stdout.strip()
        if state in BOOTED_STATES:
            return
        time.sleep(POLL_SECONDS)
    raise HarnessError(f"systemd did not boot in {timeout} s (state {state!r}):\n{ns.console()}")


def _teardown(
    launcher: subprocess.Popen[bytes], pid: int | None, cgroup: Path, v1: Sequence[Path] = ()
) -> None:
    """Kill PID 1 by pid, reap the launcher, then empty and remove the cgroup."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        launcher.wait(timeout=TEARDOWN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait(timeout=TEARDOWN_TIMEOUT_SECONDS)
    _kill_cgroup(cgroup)
    for path in v1:
        _kill_cgroup(path)


@contextlib.contextmanager
def booted_systemd(
    unit_files: Mapping[str, str],
    *,
    users: Sequence[str] = (),
    members: Mapping[str, Sequence[str]] | None = None,
    opt_dir: Path | None = None,
    journald: bool = False,
    v1_memory: bool = False,
    boot_timeout: float = BOOT_TIMEOUT_SECONDS,
) -> Iterator[SystemdNamespace]:
    """Boot systemd on unit_files (name -> text) in isolated namespaces; tear it down after.

    Names may be unit files (`foo.service`) or drop-ins (`foo.service.d/bar.conf`).
    users are accounts (each with its own group) added to private copies of /etc/passwd
    and /etc/group; members adds users to groups ({"group": ["user", ...]}). opt_dir is a
    host directory seen read-only as /opt inside. journald=True starts a journald of the
    namespace's own at boot, so services log to a journal that `journalctl` reads.
    v1_memory=True boots systemd on the hybrid layout of a cgroup v1 host (module docstring)
    where the machine offers a writable v1 memory hierarchy (v1_memory_skip_reason).
    """
    reason = v1_memory_skip_reason() if v1_memory else skip_reason()
    if reason is not None:
        raise HarnessError(reason)
    if journald and not JOURNALD_BINARY.exists():
        raise HarnessError(f"systemd-journald is not installed ({JOURNALD_BINARY} missing)")
    if opt_dir is not None and not opt_dir.is_dir():
        raise HarnessError(f"opt_dir {opt_dir} is not a directory")
    root = cgroup2_root()
    assert root is not None
    workdir = Path(tempfile.mkdtemp(prefix="runsup-harness-"))
    name = f"{CGROUP_PREFIX}{uuid.uuid4().hex[:12]}"
    cgroup = root / name
    v1: list[Path] = []
    launcher: subprocess.Popen[bytes] | None = None
    pump: _ConsolePump | None = None
    pid: int | None = None
    try:
        _write_workdir(workdir, unit_files, users, members or {}, journald=journald)
        pump = _ConsolePump(workdir / CONSOLE_LOG)
        cgroup.mkdir()
        if v1_memory:
            (workdir / "proc-cgroups").write_text(_proc_cgroups_memory_only())
            for option in ("memory", "name=systemd"):
                parent = _v1_hierarchy(option)
                assert parent is not None
                v1.append(parent / name)
                v1[-1].mkdir()
        host_mnt_ns = os.readlink("/proc/self/ns/mnt")
        with (workdir / CONSOLE_LOG).open("ab") as console:
            launcher = subprocess.Popen(
                [
                    "unshare",
                    *UNSHARE_FLAGS,
                    "--",
                    "/bin/sh",
                    "-c",
                    SETUP_SH,
                    "harness-setup",
                    str(workdir),
                    host_mnt_ns,
                    INNER_DIR,
                    BOOT_TARGET,
                    INNER_PATH,
                    pump.slave_path,
                    str(cgroup),
                    str(opt_dir) if opt_dir is not None else "",
                    *(str(path) for path in v1),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                env={**_inner_env(), "HARNESS_SETUP": SETUP_SH},
            )
        deadline = time.monotonic() + boot_timeout
        while (pid := _child_of(launcher.pid)) is None:
            if launcher.poll() is not None or time.monotonic() > deadline:
                log = (workdir / CONSOLE_LOG).read_text(errors="replace")
                raise HarnessError(f"the namespace did not start:\n{log}")
            time.sleep(POLL_SECONDS)
        ns = SystemdNamespace(pid=pid, workdir=workdir, cgroup=cgroup, _launcher=launcher)
        _wait_booted(ns, max(deadline - time.monotonic(), POLL_SECONDS))
        yield ns
    finally:
        try:
            if launcher is not None:
                _teardown(launcher, pid, cgroup, v1)
            else:
                for path in (cgroup, *v1):
                    if path.exists():
                        path.rmdir()
        finally:
            if pump is not None:
                pump.close()
            shutil.rmtree(workdir, ignore_errors=True)
