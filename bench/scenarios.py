"""The scenarios: each starts its own daemon on a fresh database and returns table rows."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from lib import (
    CLK_TCK,
    READER,
    WRITER,
    BenchDaemon,
    Result,
    connect,
    cpu_seconds,
    cpu_share,
    memory,
    now,
    percentile,
    reap_orphans,
    thread_cpu_seconds,
)

from supervisor.executors.local import cgroups

FINAL = ("COMPLETED", "FAILED", "CANCELLED")
MS = 1000.0
KIB = 1024.0
MIB = 1024.0 * 1024.0
SETTLE_SECONDS = 0.5  # after a daemon starts or runs start, before measuring
ADOPT_TIMEOUT_SECONDS = 120.0  # a restarted daemon adopting the runs of the adopted scenario


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: full or --quick."""

    latency_samples: int
    pickup_samples: int
    throughput_runs: int
    load_runs: int
    load_seconds: float
    idle_runs: int
    idle_seconds: float
    memory_runs: int
    cli_runs: int
    launch_samples: int


FULL = Sizes(300, 100, 1000, 200, 10.0, 100, 10.0, 1000, 11, 200)
QUICK = Sizes(100, 15, 300, 200, 3.0, 100, 3.0, 200, 5, 50)


def _met(value: float, limit: float) -> bool:
    return value <= limit


class Reader:
    """bench/reader.py as a separate process; `stop()` returns its sightings."""

    def __init__(self, db: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(READER), str(db), *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("reader did not start")

    def stop(self) -> list[list[object]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        sightings: list[list[object]] = json.loads(out.strip().splitlines()[-1])
        return sightings


def progress_line(stamp: float, iteration: int) -> bytes:
    """An iteration record whose `erlang` is the CLOCK_MONOTONIC time it was written."""
    return (
        f'{{"type":"iteration","ts":"2026-01-01T00:00:00+00:00","erlang":{stamp!r},'
        f'"iteration":{iteration},"total_iterations":1000000}}\n'
    ).encode()


# -- progress latency ------------------------------------------------------------------------


def progress_latency(root: Path, sizes: Sizes) -> list[Result]:
    """Lines appended to a running run's progress.jsonl -> the value seen by another process."""
    with BenchDaemon(root / "latency", max_concurrent=4) as d:
        [run_id] = d.insert_pending("sleep")
        d.wait("the run RUNNING", lambda: d.count("RUNNING") == 1)
        time.sleep(SETTLE_SECONDS)
        latencies, missed = measure_progress_latency(d, run_id, sizes.latency_samples, seed=8)
    note = f"{len(latencies)} lines" + (f", {missed} never seen" if missed else "")
    med, p99 = statistics.median(latencies) * MS, percentile(latencies, 99) * MS
    return [
        Result("progress", "line -> reader: median", med, "ms", "<= 50 ms", _met(med, 50), note),
        Result("progress", "line -> reader: p99", p99, "ms", "<= 250 ms", _met(p99, 250)),
        Result("progress", "line -> reader: max", max(latencies) * MS, "ms"),
    ]


def measure_progress_latency(
    d: BenchDaemon, run_id: str, samples: int, seed: int
) -> tuple[list[float], int]:
    """Append `samples` lines to a RUNNING run's progress.jsonl at random gaps; the seconds
    each took to be seen in the database by another process, and how many never were."""
    rng = random.Random(seed)
    reader = Reader(d.db, "value", run_id)
    path = d.runs_dir / run_id / "progress.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = []
    try:
        for k in range(samples):
            # Random gaps: every phase against the daemon's and the watcher's own rhythm.
            time.sleep(rng.uniform(0.005, 0.045))
            stamp = now()
            os.write(fd, progress_line(stamp, k))
            written.append(stamp)
        time.sleep(1.0)
    finally:
        os.close(fd)
        sightings = reader.stop()
    seen = [(float(t), float(v)) for t, v in sightings if isinstance(v, float)]  # type: ignore[arg-type]
    latencies = []
    missed = 0
    j = 0
    for stamp in written:
        # A line is visible once its value, or a later line's, is in the database.
        while j < len(seen) and seen[j][1] < stamp:
            j += 1
        if j == len(seen):
            missed += 1
        else:
            latencies.append(seen[j][0] - stamp)
    return latencies, missed


# -- pickup and cancel ---------------------------------------------------------------------------


def _wait_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {path}")
        time.sleep(0.002)


def pickup_and_cancel(root: Path, sizes: Sizes) -> list[Result]:
    """PENDING inserted -> RUNNING; cancel asked -> SIGTERM in the run -> CANCELLED."""
    rng = random.Random(3)
    inserted: dict[str, float] = {}
    cancelled: dict[str, float] = {}
    termed: dict[str, float] = {}
    with BenchDaemon(root / "pickup", max_concurrent=4, cancel_grace_seconds=10) as d:
        time.sleep(SETTLE_SECONDS)
        reader = Reader(d.db, "status")
        try:
            for _ in range(sizes.pickup_samples):
                time.sleep(rng.uniform(0.02, 0.08))
                [run_id] = d.insert_pending("termsim")
                inserted[run_id] = now()
                run_dir = d.runs_dir / run_id
                _wait_file(run_dir / "ready")  # its SIGTERM handler is set
                time.sleep(rng.uniform(0.0, 0.05))
                d.request_cancel(run_id)
                cancelled[run_id] = now()
                termed[run_id] = float(_wait_file(run_dir / "term"))
                d.wait("CANCELLED", lambda r=run_id: _status(d, r) in FINAL, 30)
            time.sleep(0.2)
        finally:
            sightings = reader.stop()
        statuses = {rid: status for rid, status in d.sql("SELECT id, status FROM runs")}
    first: dict[tuple[str, str], float] = {}
    for t, rid, status in sightings:
        first.setdefault((str(rid), str(status)), float(t))  # type: ignore[arg-type]
    pickup = [first[(r, "RUNNING")] - t for r, t in inserted.items() if (r, "RUNNING") in first]
    to_term = [termed[r] - t for r, t in cancelled.items()]
    to_final = [
        first[(r, "CANCELLED")] - t for r, t in cancelled.items() if (r, "CANCELLED") in first
    ]
    wrong = sum(1 for r in inserted if statuses.get(r) != "CANCELLED")
    note = f"{len(pickup)} runs" + (f", {wrong} not CANCELLED" if wrong else "")
    med_pickup = statistics.median(pickup) * MS
    med_term = statistics.median(to_term) * MS
    return [
        Result(
            "pickup",
            "insert -> RUNNING: median",
            med_pickup,
            "ms",
            "<= 100 ms",
            _met(med_pickup, 100),
            note,
        ),
        Result("pickup", "insert -> RUNNING: p99", percentile(pickup, 99) * MS, "ms"),
        Result(
            "cancel", "asked -> SIGTERM: median", med_term, "ms", "<= 100 ms", _met(med_term, 100)
        ),
        Result("cancel", "asked -> SIGTERM: p99", percentile(to_term, 99) * MS, "ms"),
        Result("cancel", "asked -> CANCELLED: median", statistics.median(to_final) * MS, "ms"),
    ]


def _status(d: BenchDaemon, run_id: str) -> str:
    rows = d.sql("SELECT status FROM runs WHERE id = ?", (run_id,))
    return str(rows[0][0]) if rows else ""


# -- throughput -----------------------------------------------------------------------------------

CONCURRENCY = 8


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of the children it has waited for (utime..cstime).

    The keepers the daemon reaps bring their runs' time along (each keeper waits for its
    run), so for the daemon this is everything runsup spent; for tsp's server, its jobs.
    """
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Peer:
    """A peer's rate, and the CPU its own processes spent per job."""

    rate: float
    cpu_per_job: float  # the peer's own processes, its jobs included


def _xargs_rate(n: int) -> Peer:
    started, cpu = now(), children_cpu_seconds()
    subprocess.run(
        ["xargs", "-P", str(CONCURRENCY), "-n", "1", "/bin/true"],
        input="\n".join(str(i) for i in range(n)),
        text=True,
        check=True,
    )
    return Peer(n / (now() - started), (children_cpu_seconds() - cpu) / n)


TSP_SUBMIT = 'i=0; while [ "$i" -lt "$1" ]; do tsp /bin/true >/dev/null; i=$((i+1)); done'


def _tsp_rate(root: Path, n: int) -> Peer | None:
    tsp = shutil.which("tsp")
    if tsp is None:
        return None
    home = root / "tsp"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TS_SOCKET": str(home / "socket"),
        "TMPDIR": str(home),
        "TS_MAXFINISHED": str(n + 10),
    }
    subprocess.run([tsp, "-S", str(CONCURRENCY)], env=env, check=True, capture_output=True)
    # The server daemonizes; as a subreaper we adopt it, so it is a child of ours by now.
    servers = [c.pid for c in psutil.Process().children() if c.name() == "tsp"]
    try:
        started, clients = now(), children_cpu_seconds()
        server = sum(tree_cpu_seconds(pid) for pid in servers)
        # A dash loop of client calls: the cheapest way to submit to tsp from outside.
        subprocess.run(["/bin/sh", "-c", TSP_SUBMIT, "sh", str(n)], env=env, check=True)
        polling = 0.0  # our `tsp -l` calls: not the jobs' cost
        while True:
            before = children_cpu_seconds()
            listing = subprocess.run(
                [tsp, "-l"], env=env, check=True, capture_output=True, text=True
            ).stdout
            polling += children_cpu_seconds() - before
            if " running " not in listing and " queued " not in listing:
                break
            time.sleep(0.01)
        elapsed = now() - started
        # Each job ran in a client that forked into the background (adopted by us): reap them.
        reap_orphans()
        clients = children_cpu_seconds() - clients - polling
        server = sum(tree_cpu_seconds(pid) for pid in servers) - server
        peer = Peer(n / elapsed, (clients + server) / n)
        finished = sum(" finished " in line for line in listing.splitlines())
        if finished != n:
            raise RuntimeError(f"task-spooler finished {finished} jobs of {n}")
        return peer
    finally:
        subprocess.run([tsp, "-K"], env=env, capture_output=True)


@dataclass(frozen=True)
class Batch:
    """What one batch of trivial runs through runsup gave."""

    rate: float  # runs a second, from the INSERT's commit to the last final status seen
    cpu_per_run: float  # the daemon's CPU seconds per run
    busy: float  # the daemon's CPU share over the batch (1.0 = one core)
    completed: int
    events: int
    tree_cpu_per_run: float  # daemon + keepers + runs, CPU seconds per run


def _runsup_batch(root: Path, n: int, state_dir: Path | None = None) -> Batch:
    with BenchDaemon(root, max_concurrent=CONCURRENCY, state_dir=state_dir) as d:
        time.sleep(SETTLE_SECONDS)
        cpu0, tree0 = cpu_seconds(d.pid), tree_cpu_seconds(d.pid)
        started = now()
        d.insert_pending("true", n)
        final = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
        d.wait(f"{n} runs final", lambda: int(d.sql(final)[0][0]) >= n, 600)
        elapsed = now() - started
        cpu = cpu_seconds(d.pid) - cpu0
        tree = tree_cpu_seconds(d.pid) - tree0
        completed = d.count("COMPLETED")
        events = int(d.sql("SELECT count(*) FROM run_events")[0][0])
    return Batch(n / elapsed, cpu / n, cpu / elapsed, completed, events, tree / n)


def throughput(root: Path, sizes: Sizes) -> list[Result]:
    """Trivial runs (/bin/true) at concurrency 8: runsup vs task-spooler vs xargs -P 8."""
    n = sizes.throughput_runs
    xargs = _xargs_rate(n)
    tsp = _tsp_rate(root, n)
    b = _runsup_batch(root / "throughput", n)
    note = f"{n} runs, {b.completed} COMPLETED, {b.events} transitions in run_events"
    rows = [
        Result("throughput", "runsup", b.rate, "runs/s", "", None, note),
        Result(
            "throughput",
            "runsup daemon CPU per run",
            b.cpu_per_run * MS,
            "ms",
            "",
            None,
            f"daemon busy {b.busy * 100:.0f} % of a core",
        ),
        Result(
            "throughput",
            "runsup CPU per run, all its processes",
            b.tree_cpu_per_run * MS,
            "ms",
            "",
            None,
            "daemon + keepers + /bin/true",
        ),
        Result(
            "throughput",
            "xargs -P 8 (no bookkeeping)",
            xargs.rate,
            "runs/s",
            "",
            None,
            f"{xargs.cpu_per_job * MS:.1f} ms CPU a job, xargs + /bin/true",
        ),
        Result("throughput", "runsup / xargs", b.rate / xargs.rate, "x"),
    ]
    if tsp is None:
        rows.append(
            Result(
                "throughput",
                "task-spooler",
                None,
                "runs/s",
                ">= 0.5x",
                None,
                "tsp not installed (apt-get install task-spooler)",
            )
        )
    else:
        ratio = b.rate / tsp.rate
        rows += [
            Result(
                "throughput",
                "task-spooler (tsp -S 8)",
                tsp.rate,
                "runs/s",
                "",
                None,
                f"{tsp.cpu_per_job * MS:.1f} ms CPU a job: clients, server, /bin/true",
            ),
            Result("throughput", "runsup / task-spooler", ratio, "x", ">= 0.5x", ratio >= 0.5),
        ]
    return rows


# -- what limits throughput -----------------------------------------------------------------------

TMPFS = Path("/dev/shm")
FILE_SAMPLES = 300


# A run's folder as runsup lays it out (SPEC section 4 plus the keeper's record folder).
RUN_LAYOUT_DIRS = ("", "logs", ".runsup")
RUN_LAYOUT_FILES = (
    "config.json",
    "logs/sim.log",
    ".runsup/boot_id",
    ".runsup/keeper",
    ".runsup/sim",
    ".runsup/exit",
)


def _layout_cost(where: Path) -> float:
    """CPU seconds to create one run's folders and small files in a fresh folder under `where`."""
    folder = Path(tempfile.mkdtemp(prefix="runsup-bench-files-", dir=where))
    try:
        t0 = time.process_time()
        for i in range(FILE_SAMPLES):
            run_dir = folder / f"{i:012x}"
            for sub in RUN_LAYOUT_DIRS:
                os.mkdir(run_dir / sub)
            for name in RUN_LAYOUT_FILES:
                fd = os.open(run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, b"{}\n")
                os.close(fd)
        return (time.process_time() - t0) / FILE_SAMPLES
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serial_launches(root: Path, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per LocalExecutor.launch of /bin/true, one after the other."""
    import logging

    import structlog

    from supervisor.executors.base import LaunchSpec
    from supervisor.executors.local.executor import LocalExecutor

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    executor = LocalExecutor()
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    handles = []
    wall = cpu = 0.0
    for i in range(n):
        run_dir = root / f"{i:012x}"
        (run_dir / "logs").mkdir(parents=True)
        spec = LaunchSpec(
            str(i), ["/bin/true"], run_dir, env, run_dir / "logs" / "sim.log", run_dir / ".runsup"
        )
        t0, c0 = now(), time.process_time()
        handles.append(executor.launch(spec))
        wall += now() - t0
        cpu += time.process_time() - c0
        if len(handles) >= CONCURRENCY:
            handle = handles.pop(0)
            while handle.exit_status() is None:
                time.sleep(0.001)
            handle.close()
    for handle in handles:
        while handle.exit_status() is None:
            time.sleep(0.001)
        handle.close()
    return wall / n, cpu / n


def _fs_type(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    best, kind = "", "?"
    target = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def limits(root: Path, sizes: Sizes) -> list[Result]:
    """What bounds the trivial-run rate on this machine: the disk, the launch, the loop."""
    root.mkdir(parents=True, exist_ok=True)
    layout = f"{len(RUN_LAYOUT_DIRS)} folders + {len(RUN_LAYOUT_FILES)} files"
    rows = [
        Result(
            "limits",
            f"a run's {layout}: {_fs_type(root)} here",
            _layout_cost(root) * MS,
            "ms CPU",
            "",
            None,
            "task-spooler makes 1 file a job",
        ),
    ]
    if TMPFS.is_dir():
        rows.append(
            Result(
                "limits", f"a run's {layout}: {_fs_type(TMPFS)}", _layout_cost(TMPFS) * MS, "ms CPU"
            )
        )
    wall, cpu = _serial_launches(root / "launch", sizes.launch_samples)
    rows += [
        Result(
            "limits",
            "one launch (LocalExecutor.launch): wall",
            wall * MS,
            "ms",
            "",
            None,
            f"the loop waits for it: at most {1 / wall:.0f} launches/s",
        ),
        Result(
            "limits",
            "one launch (LocalExecutor.launch): CPU",
            cpu * MS,
            "ms",
            "",
            None,
            "in the daemon's process",
        ),
    ]
    if TMPFS.is_dir():
        shm = Path(tempfile.mkdtemp(prefix="runsup-bench-", dir=TMPFS))
        try:
            b = _runsup_batch(root / "tmpfs", sizes.throughput_runs, state_dir=shm)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        rows += [
            Result(
                "limits",
                "runsup, state dir on tmpfs",
                b.rate,
                "runs/s",
                "",
                None,
                f"{sizes.throughput_runs} runs, {b.completed} COMPLETED",
            ),
            Result(
                "limits",
                "runsup, state dir on tmpfs: daemon CPU/run",
                b.cpu_per_run * MS,
                "ms",
                "",
                None,
                f"daemon busy {b.busy * 100:.0f} % of a core",
            ),
        ]
    return rows


# -- progress load --------------------------------------------------------------------------------

LOAD_RATE = 50.0  # lines a second per run
LAG_SAMPLE_SECONDS = 0.1


def progress_load(root: Path, sizes: Sizes) -> list[Result]:
    """200 runs writing 50 lines a second each: how stale the database is, what it costs."""
    return _load(root / "load", sizes, "load", "sleep", "progress.jsonl", "progress_offset")


def output_load(root: Path, sizes: Sizes) -> list[Result]:
    """The same load printed to the runs' logs and read with progress_patterns (SPEC 12)."""
    return _load(
        root / "load_output", sizes, "output", "sleep_patterns", "logs/sim.log", "output_offset"
    )


def _load(
    root: Path, sizes: Sizes, name: str, template: str, target: str, offset_column: str
) -> list[Result]:
    n = sizes.load_runs
    with BenchDaemon(root, max_concurrent=max(256, n)) as d:
        ids = d.insert_pending(template, n)
        d.wait_count("RUNNING", n)
        time.sleep(SETTLE_SECONDS)
        paths = [str(d.runs_dir / rid / target) for rid in ids]
        warmup = 1.0
        writer = subprocess.Popen(
            [sys.executable, str(WRITER), str(sizes.load_seconds + warmup), str(LOAD_RATE), *paths],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(warmup)
        cpu0, t0 = cpu_seconds(d.pid), now()
        lags: list[float] = []
        query = "SELECT current_erlang FROM runs WHERE status = 'RUNNING'"
        while now() - t0 < sizes.load_seconds - 0.2:
            values = [v for (v,) in d.sql(query)]
            t = now()
            lags += [t - v for v in values if v is not None]
            time.sleep(LAG_SAMPLE_SECONDS)
        share = (cpu_seconds(d.pid) - cpu0) / (now() - t0)
        out, _ = writer.communicate(timeout=60)
        summary = json.loads(out)
        time.sleep(1.0)
        behind = 0
        for rid, path in zip(ids, paths, strict=True):
            (offset,) = d.sql(f"SELECT {offset_column} FROM runs WHERE id = ?", (rid,))[0]
            behind += int(offset or 0) != os.path.getsize(path)
    rate = summary["lines_per_second"]
    note = f"{n} runs, {len(lags)} samples; after the load {behind} runs behind their file"
    med, p99 = statistics.median(lags) * MS, percentile(lags, 99) * MS
    return [
        Result(
            name,
            "written (all runs)",
            rate,
            "lines/s",
            f"{n * LOAD_RATE:,.0f} lines/s",
            None,
            f"one writer process, {summary['cpu_seconds']:.1f} s CPU",
        ),
        Result(name, "lag: median", med, "ms", "", None, note),
        Result(name, "lag: p99", p99, "ms", "< 1000 ms", p99 < 1000),
        Result(name, "lag: max", max(lags) * MS, "ms"),
        Result(name, "daemon CPU", share * 100, "% core", "< 50 %", share < 0.5),
    ]


# -- idle -----------------------------------------------------------------------------------------


def _data_version(conn: object) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])  # type: ignore[attr-defined]


def idle(root: Path, sizes: Sizes) -> list[Result]:
    """100 quiet runs: the daemon's CPU share and database writes a second."""
    return _idle(root / "idle", sizes, "idle", "sleep")


def capped(root: Path, sizes: Sizes) -> list[Result]:
    """With memory caps on (each run in a cgroup of its own): idle, and the progress load."""
    support = cgroups.detect()
    if not support.enforced:
        return [Result("capped", "skipped", 0, "", "", None, f"no memory caps: {support.reason}")]
    return _idle(root / "idle_capped", sizes, "capped", "sleep_capped") + _load(
        root / "load_capped", sizes, "capped", "sleep_capped", "progress.jsonl", "progress_offset"
    )


def adopted(root: Path, sizes: Sizes) -> list[Result]:
    """100 quiet runs adopted by a restarted daemon (without pidfds, a timer looks at them)."""
    return _idle(root / "adopted", sizes, "adopted", "sleep", restart=True)


def _wait_adopted(d: BenchDaemon, n: int) -> None:
    """Until the restarted daemon logged the adoption of `n` runs (its start does that work)."""
    deadline = now() + ADOPT_TIMEOUT_SECONDS
    while d.log_path.read_bytes().count(b'"run_adopted"') < 2 * n:  # each logs two lines
        if now() > deadline:
            raise RuntimeError(f"{n} runs not adopted within {ADOPT_TIMEOUT_SECONDS:g} s")
        time.sleep(0.05)


def _idle(
    root: Path, sizes: Sizes, name: str, template: str, *, restart: bool = False
) -> list[Result]:
    n = sizes.idle_runs
    with BenchDaemon(root, max_concurrent=max(n, 8)) as d:
        d.insert_pending(template, n)
        d.wait_count("RUNNING", n)
        if restart:
            d.restart()
            _wait_adopted(d, n)
        time.sleep(2.5)  # past the first rescan after the launches (or the adoptions)
        probe = connect(d.db)
        wal = Path(f"{d.db}-wal")
        version = _data_version(probe)
        wal0 = wal.stat().st_size
        changes = 0
        cpu0, t0 = cpu_seconds(d.pid), now()
        main0, others0 = thread_cpu_seconds(d.pid)
        while now() - t0 < sizes.idle_seconds:
            time.sleep(0.05)
            v = _data_version(probe)
            changes += v != version
            version = v
        elapsed = now() - t0
        share = (cpu_seconds(d.pid) - cpu0) / elapsed
        main1, others1 = thread_cpu_seconds(d.pid)
        split = (
            f"loop thread {(main1 - main0) / elapsed * 100:.2f} %, "
            f"watcher threads {(others1 - others0) / elapsed * 100:.2f} %"
        )
        wal_growth = wal.stat().st_size - wal0
        probe.close()
    window = sizes.idle_seconds
    return [
        Result(
            name,
            f"daemon CPU, {n} quiet runs" + (", adopted" if restart else ""),
            share * 100,
            "% core",
            "< 1 %",
            share < 0.01,
            f"over {window:g} s; {split}",
        ),
        Result(
            name,
            "database commits",
            changes / window,
            "/s",
            "0",
            changes == 0,
            f"data_version sampled every 50 ms; WAL grew {wal_growth} bytes",
        ),
    ]


# -- memory ---------------------------------------------------------------------------------------


def memory_at_scale(root: Path, sizes: Sizes) -> list[Result]:
    """The daemon's memory with many quiet runs RUNNING, and what one run costs."""
    n = sizes.memory_runs
    with BenchDaemon(root / "memory", max_concurrent=n) as d:
        time.sleep(SETTLE_SECONDS)
        before = memory(d.pid)
        started = now()
        d.insert_pending("sleep", n)
        d.wait_count("RUNNING", n, timeout=600)
        launch_rate = n / (now() - started)
        time.sleep(2.5)
        after = memory(d.pid)
        keepers = [int(k) for (k,) in d.sql("SELECT keeper_pid FROM runs")]
        sims = [int(p) for (p,) in d.sql("SELECT pid FROM runs")]
        keeper_uss = statistics.mean(memory(k).uss for k in keepers[:100])
        sim_uss = statistics.mean(memory(p).uss for p in sims[:100])
        share = cpu_share(d.pid, 3.0)
    return [
        Result(
            "memory",
            f"daemon RSS, {n} runs RUNNING",
            after.rss / MIB,
            "MiB",
            "< 100 MB",
            after.rss < 100e6,
            f"quiet runs (sleep); {before.rss / MIB:.1f} MiB with none",
        ),
        Result("memory", f"daemon USS, {n} runs RUNNING", after.uss / MIB, "MiB"),
        Result("memory", "daemon growth per run (USS)", (after.uss - before.uss) / n / KIB, "KiB"),
        Result(
            "memory",
            "keeper per run (USS)",
            keeper_uss / KIB,
            "KiB",
            "",
            None,
            f"the run's own process (sleep) {sim_uss / KIB:.0f} KiB",
        ),
        Result("memory", f"launch rate to {n} RUNNING", launch_rate, "runs/s"),
        Result("memory", f"daemon CPU, {n} quiet runs", share * 100, "% core"),
    ]


# -- the CLI --------------------------------------------------------------------------------------


def cli_startup(root: Path, sizes: Sizes) -> list[Result]:
    """`runsup list` on a 100-row database, wall time (bench/cli_startup.py)."""
    import cli_startup as cli

    times = cli.measure(runs=sizes.cli_runs, rows=cli.DEFAULT_ROWS, tmp=root / "cli")
    med = statistics.median(times)
    return [
        Result(
            "cli",
            f"runsup list, {cli.DEFAULT_ROWS} rows: median",
            med * MS,
            "ms",
            f"< {cli.TARGET_SECONDS * MS:.0f} ms",
            med < cli.TARGET_SECONDS,
            f"{len(times)} calls",
        ),
    ]


SCENARIOS: dict[str, Callable[[Path, Sizes], list[Result]]] = {
    "latency": progress_latency,
    "pickup": pickup_and_cancel,
    "throughput": throughput,
    "limits": limits,
    "load": progress_load,
    "output": output_load,
    "idle": idle,
    "adopted": adopted,
    "capped": capped,
    "memory": memory_at_scale,
    "cli": cli_startup,
}
