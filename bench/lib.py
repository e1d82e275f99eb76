"""Shared pieces of the benchmarks: a daemon in a temp dir, plain-sqlite3 access, /proc figures.

Everything here talks to the database the way a foreign program would (the stdlib sqlite3
module, short transactions) and to the daemon as a real process (`runsup daemon`, the one
installed next to this interpreter), so the figures are what another program on the machine
would see.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
RUNSUP = Path(sys.executable).parent / "runsup"
TERMSIM = BENCH_DIR / "termsim.py"
READER = BENCH_DIR / "reader.py"
WRITER = BENCH_DIR / "writer.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0
WAIT_POLL_SECONDS = 0.005
STOP_TIMEOUT = 60.0
PR_SET_CHILD_SUBREAPER = 36
# Set by run.py --profile: a folder for one py-spy profile of each daemon (raw, collapsed stacks).
PROFILE_DIR_VARIABLE = "RUNSUP_BENCH_PROFILE_DIR"
PY_SPY = Path(sys.executable).parent / "py-spy"


def now() -> float:
    """CLOCK_MONOTONIC: system-wide on Linux, so comparable between processes of one machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def sql_time(when: datetime | None = None) -> str:
    """A timestamp as the SPEC stores it: UTC text `YYYY-MM-DD HH:MM:SS.ffffff`."""
    return (when or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S.%f")


def new_id() -> str:
    """A run id as the SPEC wants it: 12 lowercase hex characters."""
    return secrets.token_hex(6)


def print_median(label: str, times: Sequence[float], target: float, check: bool) -> int:
    """Print the median wall time against its target; 1 when `check` and it misses, else 0."""
    median = statistics.median(times)
    verdict = "OK" if median < target else "SLOW"
    print(
        f"{label}: median {median:.3f} s (min {min(times):.3f} s, max {max(times):.3f} s); "
        f"target < {target} s: {verdict}"
    )
    return 1 if check and verdict == "SLOW" else 0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def become_subreaper() -> None:
    """Orphans (keepers and runs left when a daemon stops) come to us, so no zombie is left."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans() -> None:
    """Reap whatever ended among our children and adopted orphans."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def connect(db: Path) -> sqlite3.Connection:
    """A plain autocommit connection, as any other program would open one."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used: its threads' schedstat run times, to the nanosecond.

    /proc/<pid>/stat's utime + stime count in clock ticks (10 ms here): over a 3 s window one
    tick is 0.33 % of a core, too coarse for an idle daemon. schedstat leaves out threads that
    have ended, which the daemon's (all long-lived) do not; without schedstat, stat it is.
    """
    main, others = thread_cpu_seconds(pid)
    if main or others:
        return main + others
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds from schedstat (nanosecond precision)."""
    main = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                ns = int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(tid) == pid:
            main += ns / 1e9
        else:
            others += ns / 1e9
    return main, others


@dataclass(frozen=True)
class Memory:
    """Resident and unique set sizes in bytes."""

    rss: int
    uss: int


def memory(pid: int) -> Memory:
    """RSS and USS (what would be freed if the process ended) of one process."""
    info = psutil.Process(pid).memory_full_info()
    return Memory(rss=int(info.rss), uss=int(info.uss))


@dataclass
class Result:
    """One line of the table."""

    scenario: str
    figure: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""

    def formatted(self) -> str:
        """The value with its unit, in a width-friendly form."""
        if self.value is None or math.isnan(self.value):
            return "n/a"
        v = self.value
        if self.unit in ("", "x", "runs/s", "lines/s", "/s"):
            text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
        else:
            text = f"{v:.1f}" if abs(v) < 100 else f"{v:,.0f}"
        return f"{text} {self.unit}".strip()


TEMPLATES = f"""
[templates.true]
command = ["/bin/true"]

[templates.sleep]
command = ["/bin/sleep", "100000"]

# The same quiet run under a memory cap: its own cgroup (SPEC section 10).
[templates.sleep_capped]
command = ["/bin/sleep", "100000"]
memory_max = "64M"

# The same quiet run, its progress read from its output lines (SPEC section 12): bench/writer.py
# appends its lines to logs/sim.log, as a simulation printing its progress would.
[templates.sleep_patterns]
command = ["/bin/sleep", "100000"]
progress_patterns = ['"erlang":(?P<erlang>[0-9.]+),"iteration":(?P<iteration>[0-9]+)']

[templates.termsim]
command = ["{{python}}", "-I", "-S", "{TERMSIM}"]
"""


class BenchDaemon:
    """`runsup daemon` on a fresh database and runs dir under `root`."""

    def __init__(
        self,
        root: Path,
        *,
        max_concurrent: int,
        state_dir: Path | None = None,
        **settings: Any,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        # The default layout (runs.db beside runs/, as in the state directory); the daemon's
        # own log and config elsewhere, so that its log lines do not touch the database's folder
        # (which the daemon watches for other programs' commits).
        state = state_dir or root / "state"
        self.db = state / "runs.db"
        self.runs_dir = state / "runs"
        self.config = root / "config.toml"
        self.log_path = root / "daemon.log"
        values: dict[str, Any] = {
            "database": str(self.db),
            "runs_dir": str(self.runs_dir),
            "max_concurrent_runs": max_concurrent,
            "cancel_grace_seconds": 2,
            "on_stop": "detach",
            **settings,
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n" + TEMPLATES)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: sqlite3.Connection | None = None
        self.profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the daemon and wait until it logs daemon_ready (it has created the schema)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSUP_")}
        env.pop("NOTIFY_SOCKET", None)
        env["HOME"] = str(self.root)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(RUNSUP), "--config", str(self.config), "daemon"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while b"daemon_ready" not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("daemon not ready in time")
            time.sleep(0.02)
        self.conn = connect(self.db)
        self._start_profiler()

    def restart(self) -> None:
        """Stop the daemon (its runs detach and live on) and start a new one, which adopts them."""
        self._stop_profiler()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(STOP_TIMEOUT)
        self.start()

    def _start_profiler(self) -> None:
        where = os.environ.get(PROFILE_DIR_VARIABLE)
        if not where:
            return
        out = Path(where) / f"{self.root.name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.profiler = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                "500",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches

    def _stop_profiler(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait(30)
            self.profiler = None

    def sql(self, query: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the bench's own plain connection."""
        assert self.conn is not None
        return self.conn.execute(query, tuple(params)).fetchall()

    def insert_pending(self, template: str, count: int = 1, config: str = "{}") -> list[str]:
        """Submit runs the way a foreign program may: an INSERT of a PENDING row (one commit)."""
        assert self.conn is not None
        ids = [new_id() for _ in range(count)]
        created = sql_time()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO runs (id, status, config_json, template, created_at)"
            " VALUES (?, 'PENDING', ?, ?, ?)",
            [(run_id, config, template, created) for run_id in ids],
        )
        self.conn.execute("COMMIT")
        return ids

    def request_cancel(self, run_id: str) -> None:
        """Ask for a cancel the foreign way: set cancel_requested_at."""
        self.sql(
            "UPDATE runs SET cancel_requested_at = ? WHERE id = ? AND status IN"
            " ('PENDING', 'RUNNING') AND cancel_requested_at IS NULL",
            (sql_time(), run_id),
        )

    def count(self, status: str) -> int:
        """How many runs have this status."""
        return int(self.sql("SELECT count(*) FROM runs WHERE status = ?", (status,))[0][0])

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
        """Poll until `check()`; fail naming `what` (and the daemon's state) at the deadline."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon died while waiting for {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(WAIT_POLL_SECONDS)

    def wait_count(self, status: str, n: int, timeout: float = 120.0) -> None:
        """Wait until at least n runs have this status."""
        self.wait(f"{n} runs {status}", lambda: self.count(status) >= n, timeout)

    def stop(self) -> None:
        """Stop the daemon (detach), then kill every run and keeper it left, and reap them."""
        self._stop_profiler()
        groups: list[int] = []
        if self.conn is not None:
            rows = self.sql(
                "SELECT pgid, keeper_pid FROM runs WHERE status IN ('RUNNING', 'PENDING')"
            )
            groups = [g for row in rows for g in row if g]
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pgid in groups:
            # Runs lead their own group, keepers theirs: all of them were started by this bench.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.1)
        reap_orphans()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> BenchDaemon:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core a process used over the next `seconds` (1.0 = one full core)."""
    before, t0 = cpu_seconds(pid), now()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (now() - t0)
