"""A real single-node Slurm cluster in a temporary directory, for tests and benchmarks.

Debian's munged, slurmctld and slurmd (and, for the accounting variant, mariadbd and slurmdbd)
run as children of the test process, with every file under one base directory and every
daemon on a free loopback port (`CommunicationParameters=NoInAddrAny,NoCtldInAddrAny`), so
several clusters can run side by side on one machine and nothing listens on its interfaces.
Facts it relies on, checked with Debian's Slurm 22.05 and munge 0.5: munged's socket folder
must be 0755; the daemons run in the foreground (`-D`) as children, since daemonized ones
leave zombies behind; clients find the cluster through SLURM_CONF; `squeue -j ID` shows a
finished job only with `-t all`, and its record is purged MinJobAge (plus a few seconds)
after it ended; running jobs survive `scontrol shutdown`, so teardown cancels every job and
waits for an empty queue first.

    cluster = start_cluster(base_dir, accounting=False)
    cluster.run("sbatch", "--wrap=true")      # SLURM_CONF set for you
    cluster.stop()                            # cancels jobs, stops every daemon, leaves nothing

Four partitions on the one node: `debug` (the default, OverSubscribe=FORCE:8: jobs start at
once), `whole` (OverSubscribe=NO: a job asking for every CPU makes the next one wait,
Reason=Resources), and for preemption `low` and `high` (PreemptType=preempt/partition_prio): a
`high` job that needs the CPUs a `low` job holds preempts it, with PreemptMode=REQUEUE and
GraceTime=PREEMPT_GRACE_SECONDS: the low job first gets its --signal (preempt_send_user_signal),
SIGTERM after the grace, and ends PREEMPTED (submitted with --no-requeue). Jobs of `debug` and
`whole` are never preempted (PreemptMode=OFF).
Memory is scheduled (CR_Core_Memory) and `--mem` is enforced by sampling every second.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from marker import MARKER_VARIABLE, marker_env

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "sacct")
ACCOUNTING_BINARIES = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacctmgr")

CLUSTER_NAME = "ci"
DEFAULT_PARTITION = "debug"
WHOLE_PARTITION = "whole"  # OverSubscribe=NO: for jobs that must wait in the queue
LOW_PARTITION = "low"  # preempted by a job of HIGH_PARTITION that needs its CPUs
HIGH_PARTITION = "high"
# A preempted job's time between its warning signal and SIGTERM (slurmctld checks it about
# every 10-30 s, so SIGTERM comes later than this).
PREEMPT_GRACE_SECONDS = 10
# Seconds a finished job's record stays in slurmctld (squeue -t all) before it is purged;
# the purge itself runs a few seconds later (measured: 10 s -> gone after ~16 s).
MIN_JOB_AGE_SECONDS = 10
# A job step credential's life; also how long a requeued job waits before it starts again.
CRED_EXPIRE_SECONDS = 10
# SIGTERM -> SIGKILL delay for a job Slurm kills (cancel, time limit).
KILL_WAIT_SECONDS = 2
DEFAULT_MEMORY_PER_CPU_MIB = 64  # what a job without --mem holds of the node's memory
# Loopback ports are picked at random here (below the kernel's ephemeral range).
PORT_RANGE = (20000, 32000)
PORT_ATTEMPTS = 200

COMMAND_TIMEOUT = 30.0  # one client command (sbatch, squeue, ...)
DAEMON_READY_TIMEOUT = 30.0  # a daemon's port accepting, the node idle
PROBE_JOB_TIMEOUT = 60.0  # the first job (slurmctld schedules nothing for ~3 s)
DRAIN_TIMEOUT = 30.0  # every job gone after scancel
DAEMON_EXIT_TIMEOUT = 15.0  # a daemon ending after shutdown / SIGTERM
POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

MUNGE_KEY_BYTES = 1024
DB_USER = "slurm"
DB_PASSWORD = "runsup-ci"  # a throwaway database on loopback only, gone with the temp dir
DB_NAME = "slurm_acct_db"


class ClusterError(RuntimeError):
    """The test cluster could not be started or did not answer."""


def missing_binaries(accounting: bool = False) -> list[str]:
    """The programs a cluster (with accounting, if asked) needs that are not installed."""
    wanted = SLURM_BINARIES + (ACCOUNTING_BINARIES if accounting else ())
    return [name for name in wanted if _which(name) is None]


def unavailable_reason(accounting: bool = False) -> str | None:
    """Why a cluster cannot be started here (a skip reason), or None when it can."""
    if os.geteuid() != 0:
        return "a test Slurm cluster needs root (slurmd runs jobs as their user)"
    missing = missing_binaries(accounting)
    if missing:
        extra = " slurmdbd mariadb-server" if accounting else ""
        return (
            f"Slurm test cluster: {', '.join(missing)} not installed "
            f"(apt-get install slurmctld slurmd slurm-client munge{extra}; .ci/run does)"
        )
    return None


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/bin:/sbin"
    return shutil.which(name, path=path)


def _binary(name: str) -> str:
    found = _which(name)
    if found is None:
        raise ClusterError(f"{name} is not installed")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that nothing listens on right now."""
    ports: list[int] = []
    for _ in range(PORT_ATTEMPTS):
        port = random.randrange(*PORT_RANGE)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise ClusterError(f"no {count} free ports in {PORT_RANGE}")


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(what: str, check: object, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL_SECONDS)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")


def listening_addresses(ports: Sequence[int]) -> set[str]:
    """The local addresses ("127.0.0.1", "0.0.0.0", "::", ...) listening on any of `ports`."""
    wanted = {f"{port:04X}" for port in ports}
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, port = fields[1].split(":")
                if port in wanted and fields[3] == "0A":  # 0A: LISTEN
                    found.add(_decode_address(address))
    return found


def _decode_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


@dataclass
class SlurmCluster:
    """A running test cluster: its files, ports and a client environment."""

    base: Path
    node: str
    cpus: int
    accounting: bool
    ports: dict[str, int]
    env: dict[str, str]
    # munged's socket directory: outside `base`, since every directory above the socket must
    # be searchable by all (pytest's temporary directories are 0700).
    munge_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_seconds: float = 0.0

    @property
    def munge_socket(self) -> Path:
        """The socket clients and daemons reach munged at."""
        return self.munge_dir / "munge.sock"

    @property
    def conf(self) -> Path:
        """The slurm.conf clients must be pointed at (SLURM_CONF)."""
        return self.base / "etc" / "slurm.conf"

    @property
    def logs(self) -> Path:
        """The directory of the daemons' log files."""
        return self.base / "log"

    def run(
        self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster; raise on failure when `check`."""
        result = subprocess.run(
            [_binary(argv[0]), *argv[1:]],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(argv)}: rc {result.returncode}: {result.stderr.strip()}")
        return result

    def job_ids(self) -> list[str]:
        """The ids of every job slurmctld still lists (any state)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i").stdout
        return out.split()

    def live_job_ids(self) -> list[str]:
        """The ids of jobs not yet finished (pending, running, completing)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def job_state(self, job_id: str) -> str:
        """The state squeue shows for one job ("" once it is purged)."""
        result = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False)
        return result.stdout.strip()

    def wait_job_state(self, job_id: str, states: Sequence[str], timeout: float) -> str:
        """Wait until the job is in one of `states`; return that state."""
        seen: list[str] = []

        def reached() -> bool:
            seen.append(self.job_state(job_id))
            return seen[-1] in states

        _wait_for(f"job {job_id} to reach {'/'.join(states)} (last {seen[-1:]})", reached, timeout)
        return seen[-1]

    def cancel_all(self) -> None:
        """Cancel every job and wait until none is left running or queued."""
        if "slurmctld" not in self.processes:
            return
        self.run("scancel", "--user=root", check=False)
        _wait_for("every job to end", lambda: not self.live_job_ids(), DRAIN_TIMEOUT)

    def stop(self) -> None:
        """Cancel all jobs, stop every daemon in order and wait for each to exit."""
        try:
            if self._alive("slurmctld"):
                with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                    self.cancel_all()
                    self.run("scontrol", "shutdown", check=False)
        finally:
            for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
                self._end(name)
            shutil.rmtree(self.munge_dir, ignore_errors=True)

    def _alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def _end(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if name in ("slurmd", "slurmctld"):  # told by `scontrol shutdown`: let them finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=DAEMON_EXIT_TIMEOUT)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=DAEMON_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_cluster(base: Path, *, accounting: bool = False) -> SlurmCluster:
    """Start a fresh single-node cluster under `base`; ready for jobs when this returns."""
    started = time.monotonic()
    node = socket.gethostname().split(".")[0]
    names = ["slurmctld", "slurmd"] + (["slurmdbd", "mysql"] if accounting else [])
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    for sub in ("etc", "log", "run", "state", "spool", "jobcomp", "mysql"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    env = _client_env(base)
    munge_dir = Path(tempfile.mkdtemp(prefix="runsup-munge-"))
    munge_dir.chmod(0o755)  # munged refuses a socket others cannot reach
    cluster = SlurmCluster(
        base=base,
        node=node,
        cpus=os.cpu_count() or 1,
        accounting=accounting,
        ports=ports,
        env=env,
        munge_dir=munge_dir,
    )
    try:
        _start_munge(cluster)
        if accounting:
            _start_mariadb(cluster)
        _write_slurm_conf(cluster)
        if accounting:
            _start_slurmdbd(cluster)
        _start_slurm(cluster)
        _wait_until_scheduling(cluster)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds = time.monotonic() - started
    return cluster


def _client_env(base: Path) -> dict[str, str]:
    steering = ("SLURM_", "SBATCH_", "SQUEUE_", "SACCT_", "SCANCEL_")
    # Without the test marker: a process started with this environment later must carry the
    # marker of the test that starts it, not that of the session fixture that made the cluster.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(steering) and k != MARKER_VARIABLE
    }
    env["SLURM_CONF"] = str(base / "etc" / "slurm.conf")
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    return env


def _spawn(cluster: SlurmCluster, name: str, argv: list[str]) -> None:
    log_path = cluster.logs / f"{name}.out"
    with open(log_path, "ab") as out:
        cluster.processes[name] = subprocess.Popen(
            argv,
            env={**cluster.env, **marker_env()},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest must not reach the daemons first
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    # A test run killed with SIGKILL must not leave a cluster behind: the kernel sends SIGTERM
    # to each daemon when the process that started it dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _check_alive(cluster: SlurmCluster, name: str) -> bool:
    if not cluster._alive(name):
        log_text = (cluster.logs / f"{name}.out").read_text(errors="replace")[-2000:]
        raise ClusterError(f"{name} exited at start:\n{log_text}")
    return True


def _start_munge(cluster: SlurmCluster) -> None:
    munge = cluster.munge_dir
    key = munge / "munge.key"
    key.write_bytes(os.urandom(MUNGE_KEY_BYTES))
    key.chmod(0o600)
    socket_path = cluster.munge_socket
    _spawn(
        cluster,
        "munged",
        [
            _binary("munged"),
            "-F",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={cluster.logs / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
    )
    _wait_for(
        "munged's socket",
        lambda: _check_alive(cluster, "munged") and socket_path.exists(),
        DAEMON_READY_TIMEOUT,
    )


def _start_mariadb(cluster: SlurmCluster) -> None:
    datadir = cluster.base / "mysql"
    sock = cluster.base / "run" / "mysqld.sock"
    subprocess.run(
        [_binary("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={datadir}"],
        capture_output=True,
        check=True,
        timeout=COMMAND_TIMEOUT,
    )
    _spawn(
        cluster,
        "mariadbd",
        [
            _binary("mariadbd"),
            "--no-defaults",
            "--user=root",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--pid-file={cluster.base / 'run' / 'mariadbd.pid'}",
            f"--log-error={cluster.logs / 'mariadbd.log'}",
            "--bind-address=127.0.0.1",
            f"--port={cluster.ports['mysql']}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
        ],
    )
    _wait_for(
        "mariadbd's port",
        lambda: _check_alive(cluster, "mariadbd") and _port_accepts(cluster.ports["mysql"]),
        DAEMON_READY_TIMEOUT,
    )
    sql = (
        f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
        f"GRANT ALL ON *.* TO '{DB_USER}'@'127.0.0.1';"
    )
    subprocess.run(
        [_binary("mariadb"), "--no-defaults", f"--socket={sock}", "-u", "root", "-e", sql],
        capture_output=True,
        check=True,
        timeout=COMMAND_TIMEOUT,
    )


def _write_slurm_conf(cluster: SlurmCluster) -> None:
    b = cluster.base
    munge_socket = cluster.munge_socket
    memory_mib = _node_memory_mib()
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={cluster.node}(127.0.0.1)",
        f"SlurmctldPort={cluster.ports['slurmctld']}",
        f"SlurmdPort={cluster.ports['slurmd']}",
        "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        # cred_expire: a requeued job waits this long before it may start again (default 120)
        f"AuthInfo=socket={munge_socket},cred_expire={CRED_EXPIRE_SECONDS}",
        f"StateSaveLocation={b / 'state'}",
        f"SlurmdSpoolDir={b / 'spool'}",
        f"SlurmctldPidFile={b / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={b / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={b / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        # Memory is a resource (as on most clusters): --mem is a cap. A job over it is killed
        # by the sampling below (SIGKILL, "exceeded memory limit" in its log; the state is
        # FAILED, not OUT_OF_MEMORY, which needs task/cgroup). Jobs without --mem hold little.
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={DEFAULT_MEMORY_PER_CPU_MIB}",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=task=1",  # MaxRSS of short jobs too, and a cap checked each second
        "JobAcctGatherParams=OverMemoryKill",
        "MpiDefault=none",
        "ReturnToService=2",
        f"KillWait={KILL_WAIT_SECONDS}",
        f"MinJobAge={MIN_JOB_AGE_SECONDS}",
        "SchedulerParameters=batch_sched_delay=0",
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        # The job's --signal at the moment it is chosen for preemption, not only before its
        # time limit: the warning a checkpointing simulation needs.
        "SlurmctldParameters=preempt_send_user_signal",
        "MailProg=/bin/true",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={b / 'jobcomp' / 'jobcomp.txt'}",
    ]
    if cluster.accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={cluster.ports['slurmdbd']}",
            f"AccountingStoragePass={munge_socket}",
        ]
    else:
        lines.append("AccountingStorageType=accounting_storage/none")
    lines += [
        f"NodeName={cluster.node} NodeAddr=127.0.0.1 CPUs={cluster.cpus} "
        f"RealMemory={memory_mib} State=UNKNOWN",
        # The higher tier: a job waiting in `whole` for every CPU must not reserve the node
        # against `debug` jobs (it would hold back every other test's jobs).
        f"PartitionName={DEFAULT_PARTITION} Nodes={cluster.node} Default=YES "
        "MaxTime=INFINITE State=UP OverSubscribe=FORCE:8 PriorityTier=2 PreemptMode=OFF",
        f"PartitionName={WHOLE_PARTITION} Nodes={cluster.node} Default=NO "
        "MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=OFF",
        f"PartitionName={LOW_PARTITION} Nodes={cluster.node} Default=NO "
        "MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=REQUEUE "
        f"GraceTime={PREEMPT_GRACE_SECONDS}",
        f"PartitionName={HIGH_PARTITION} Nodes={cluster.node} Default=NO "
        "MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10 PreemptMode=OFF",
    ]
    cluster.conf.write_text("\n".join(lines) + "\n")


def _node_memory_mib() -> int:
    # Configured memory above the real one drains the node ("Low RealMemory"): stay below it.
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


def _start_slurmdbd(cluster: SlurmCluster) -> None:
    b = cluster.base
    conf = b / "etc" / "slurmdbd.conf"
    conf.write_text(
        "\n".join(
            [
                "AuthType=auth/munge",
                f"AuthInfo=socket={cluster.munge_socket}",
                f"DbdHost={cluster.node}",
                "DbdAddr=127.0.0.1",
                f"DbdPort={cluster.ports['slurmdbd']}",
                "SlurmUser=root",
                f"PidFile={b / 'run' / 'slurmdbd.pid'}",
                f"LogFile={b / 'log' / 'slurmdbd.log'}",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                f"StoragePort={cluster.ports['mysql']}",
                f"StorageUser={DB_USER}",
                f"StoragePass={DB_PASSWORD}",
                f"StorageLoc={DB_NAME}",
            ]
        )
        + "\n"
    )
    conf.chmod(0o600)  # slurmdbd refuses a config others can read (it holds a password)
    _spawn(cluster, "slurmdbd", [_binary("slurmdbd"), "-D"])
    _wait_for(
        "slurmdbd's port",
        lambda: _check_alive(cluster, "slurmdbd") and _port_accepts(cluster.ports["slurmdbd"]),
        DAEMON_READY_TIMEOUT,
    )
    cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)


def _start_slurm(cluster: SlurmCluster) -> None:
    conf = str(cluster.conf)
    _spawn(cluster, "slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", conf])
    _wait_for(
        "slurmctld's port",
        lambda: _check_alive(cluster, "slurmctld") and _port_accepts(cluster.ports["slurmctld"]),
        DAEMON_READY_TIMEOUT,
    )
    _spawn(cluster, "slurmd", [_binary("slurmd"), "-D", "-N", cluster.node, "-f", conf])
    _wait_for(
        "the node to be idle",
        lambda: _check_alive(cluster, "slurmd") and _node_idle(cluster),
        DAEMON_READY_TIMEOUT,
    )


def _node_idle(cluster: SlurmCluster) -> bool:
    result = cluster.run("sinfo", "-h", "-o", "%t", "-p", DEFAULT_PARTITION, check=False)
    return result.stdout.strip() == "idle"


def _wait_until_scheduling(cluster: SlurmCluster) -> None:
    # slurmctld schedules nothing for ~3 s after it starts: a probe job that has run to the
    # end proves the window is over, so a test's first job starts at once.
    probe = cluster.run(
        "sbatch", "--parsable", "--job-name=probe", f"--output={os.devnull}", "--wrap=true"
    )
    job_id = probe.stdout.strip().split(";")[0]
    cluster.wait_job_state(job_id, ("COMPLETED",), PROBE_JOB_TIMEOUT)


@contextlib.contextmanager
def running_cluster(base: Path, *, accounting: bool = False) -> Iterator[SlurmCluster]:
    """A cluster for the duration of a `with` block."""
    cluster = start_cluster(base, accounting=accounting)
    try:
        yield cluster
    finally:
        cluster.stop()
