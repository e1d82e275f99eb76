"""Progress from output lines (SPEC 12): latency and CPU of OutputTail, read the daemon's way.

    .venv/bin/python bench/output_patterns.py [--quick] [--json FILE]

The daemon is not wired to OutputTail yet, so this drives it as the daemon drives its
progress.jsonl tails: one process, a DirectoryWatcher (watchfiles) over the runs directory
that wakes a select() loop, and on each wake `read()` of the tail of every run whose
directory changed. A separate writer process appends FUSION's real lines to each run's
logs/sim.log, as the simulation would (O_APPEND; its stdout and stderr are that file).

* latency: one run, one line every LATENCY_INTERVAL_SECONDS; for each line, the time from
  just before its write(2) (CLOCK_MONOTONIC, system-wide) to the record coming out of read().
* cpu: LOAD_RUNS runs, LOAD_RATE matching lines a second each (10,000 lines/s in all) with
  SPEC 12's patterns; the reading process's CPU (its loop and the watcher thread) over the
  writing time, as % of one core. Target: well under half a core (the whole daemon's budget).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from supervisor.progress.dirwatch import DirectoryWatcher
from supervisor.progress.jsonl import ProgressTail
from supervisor.progress.patterns import OutputTail, compile_patterns

PATTERNS = (
    r"Starting simulation for (?P<erlang>[0-9.]+) Erlang "
    r"\(load (?P<erlang_number>[0-9]+)/(?P<total_erlangs>[0-9]+)\)",
    r"Iteration (?P<iteration>[0-9]+) out of (?P<total_iterations>[0-9]+) completed",
)
LATENCY_LINES = 300
LATENCY_INTERVAL_SECONDS = 0.02
LOAD_RUNS = 200
LOAD_RATE = 50.0
LOAD_SECONDS = 10.0
QUICK_LOAD_SECONDS = 4.0
TICK_SECONDS = 0.005  # the writer visits its files in slices this often (as bench/writer.py)
RESCAN_SECONDS = 2.0  # the daemon's default rescan: the safety net behind the hints
READY_TIMEOUT_SECONDS = 10.0
DRAIN_TIMEOUT_SECONDS = 30.0
ITERATIONS_PER_LOAD = 1_000_000_000  # the writer never starts a new load mid-measure


def now() -> float:
    """CLOCK_MONOTONIC: comparable between processes of one machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- the writer (a child process) -------------------------------------------------------


def line_for(kind: str, run: int, iteration: int) -> bytes:
    """One progress line: FUSION's output line, or the same as a progress.jsonl record."""
    if kind == "jsonl":
        return (
            f'{{"type":"iteration","erlang":{300.0 + run},"iteration":{iteration},'
            f'"total_iterations":{ITERATIONS_PER_LOAD}}}\n'
        ).encode()
    if iteration == 0:
        return f"Starting simulation for {300.0 + run} Erlang (load 1/1)\n".encode()
    return (
        f"Iteration {iteration} out of {ITERATIONS_PER_LOAD} completed for Erlang: {300.0 + run}\n"
    ).encode()


def writer(kind: str, seconds: float, rate: float, paths: list[str]) -> int:
    """Append progress lines to each path at `rate` lines a second; print when each was sent."""
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) for p in paths]
    for i, fd in enumerate(fds):
        os.write(fd, line_for(kind, i, 0))
    ticks_per_round = max(1, round(1 / rate / TICK_SECONDS))
    per_tick = -(-len(fds) // ticks_per_round)
    start = now()
    print(json.dumps({"start": start}), flush=True)
    tick = 0
    iteration = [0] * len(fds)
    sent: list[float] = []  # for a single file: when each iteration was written
    while True:
        due = start + tick * TICK_SECONDS
        t = now()
        if due > t:
            time.sleep(due - t)
        if due >= start + seconds:
            break
        first = (tick % ticks_per_round) * per_tick
        for i in range(first, min(first + per_tick, len(fds))):
            iteration[i] += 1
            line = line_for(kind, i, iteration[i])
            if len(fds) == 1:
                sent.append(now())
            os.write(fds[i], line)
        tick += 1
    usage = os.times()
    summary = {"written": sum(iteration), "seconds": now() - start, "sent": sent}
    print(json.dumps({**summary, "cpu": usage.user + usage.system}))
    return 0


# -- the reader (this process), the daemon's way ------------------------------------------


class Reader:
    """Tails of many runs' files, read when the watcher says a run's directory changed."""

    def __init__(self, runs_dir: Path, run_ids: list[str], kind: str = "output") -> None:
        """Watch runs_dir; one OutputTail (or ProgressTail for kind jsonl) per run."""
        self.runs_dir = runs_dir
        patterns = compile_patterns(PATTERNS)
        self.tails: dict[str, OutputTail | ProgressTail] = {
            r: OutputTail(runs_dir / r / "logs" / "sim.log", patterns)
            if kind == "output"
            else ProgressTail(runs_dir / r / "progress.jsonl")
            for r in run_ids
        }
        self.received: dict[str, list[tuple[int, float]]] = {r: [] for r in run_ids}
        self.records = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self.watcher = DirectoryWatcher([runs_dir], self.wake, recursive=True)
        self.watcher.start()
        if not self.watcher.wait_ready(READY_TIMEOUT_SECONDS):
            raise RuntimeError("the watcher did not start")
        self._prefix = str(runs_dir) + os.sep

    def wake(self) -> None:
        """Called from the watcher thread after each batch (as the daemon's wake())."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def step(self, timeout: float) -> None:
        """One pass of the loop: wait for a hint, read the tails of the runs it names."""
        if self.selector.select(timeout):
            while True:
                try:
                    if not os.read(self._wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        touched = set()
        cut = len(self._prefix)
        for path in self.watcher.drain():
            text = str(path)
            if text.startswith(self._prefix):
                touched.add(text[cut:].partition(os.sep)[0])
        for run_id in touched:
            tail = self.tails.get(run_id)
            if tail is None:
                continue
            t = now()
            for rec in tail.read():
                self.records += 1
                if rec.iteration is not None:
                    self.received[run_id].append((rec.iteration, t))

    def close(self) -> None:
        """Stop the watcher."""
        self.watcher.stop()
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def start_writer(
    seconds: float, rate: float, paths: list[Path], kind: str = "output"
) -> subprocess.Popen[str]:
    """This script as the writer, in a process of its own."""
    args = [sys.executable, __file__, "--writer", kind, str(seconds), str(rate), *map(str, paths)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def make_runs(root: Path, n: int, kind: str = "output") -> tuple[Path, list[str], list[Path]]:
    """A runs directory with n run directories and their empty logs (or progress files)."""
    runs_dir = root / "runs"
    ids = [f"{i:012x}" for i in range(n)]
    logs = []
    for run_id in ids:
        (runs_dir / run_id / "logs").mkdir(parents=True)
        log = runs_dir / run_id / ("logs/sim.log" if kind == "output" else "progress.jsonl")
        log.touch()
        logs.append(log)
    return runs_dir, ids, logs


def latency(root: Path) -> dict[str, Any]:
    """Write -> record latency for one run, a line every LATENCY_INTERVAL_SECONDS."""
    runs_dir, ids, logs = make_runs(root / "latency", 1)
    reader = Reader(runs_dir, ids)
    seconds = LATENCY_LINES * LATENCY_INTERVAL_SECONDS
    proc = start_writer(seconds, 1 / LATENCY_INTERVAL_SECONDS, logs)
    try:
        while proc.poll() is None:
            reader.step(RESCAN_SECONDS)
        out, _ = proc.communicate()
        summary = json.loads(out.splitlines()[-1])
        deadline = now() + DRAIN_TIMEOUT_SECONDS
        while len(reader.received[ids[0]]) < summary["written"] and now() < deadline:
            reader.step(0.1)
    finally:
        reader.close()
    sent = summary["sent"]
    got = dict(reader.received[ids[0]])
    lags = [(got[n] - sent[n - 1]) * 1000 for n in range(1, len(sent) + 1) if n in got]
    lags.sort()
    return {
        "lines": len(sent),
        "received": len(lags),
        "median_ms": statistics.median(lags),
        "p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "max_ms": lags[-1],
    }


def cpu(root: Path, seconds: float, kind: str = "output") -> dict[str, Any]:
    """The reading process's CPU for LOAD_RUNS logs at LOAD_RATE matching lines/s each."""
    runs_dir, ids, logs = make_runs(root / f"cpu-{kind}", LOAD_RUNS, kind)
    reader = Reader(runs_dir, ids, kind)
    proc = start_writer(seconds, LOAD_RATE, logs, kind)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the writer has started: measure from here
        cpu0, loop0, t0 = time.process_time(), time.thread_time(), now()
        while proc.poll() is None:
            reader.step(RESCAN_SECONDS)
        cpu1, loop1, t1 = time.process_time(), time.thread_time(), now()
        out, _ = proc.communicate()
        summary = json.loads(out.splitlines()[-1])
        expected = summary["written"] + LOAD_RUNS  # the iterations and one load start each
        deadline = now() + DRAIN_TIMEOUT_SECONDS
        while reader.records < expected and now() < deadline:
            reader.step(0.1)
    finally:
        reader.close()
    return {
        "runs": LOAD_RUNS,
        "lines_per_second": summary["written"] / summary["seconds"],
        "seconds": t1 - t0,
        "reader_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
        "loop_thread_cpu_percent": 100 * (loop1 - loop0) / (t1 - t0),
        "records": reader.records,
        "expected_records": expected,
        "writer_cpu_seconds": summary["cpu"],
    }


BURST_LINES = 1_000_000
MATCHING_LINES = 100_000


def burst(root: Path) -> dict[str, Any]:
    """CPU to read a million chatter lines, and per matching line, in bounded reads."""
    patterns = compile_patterns(PATTERNS)
    log = root / "burst.log"
    figures: dict[str, Any] = {}
    for name, lines in (
        ("chatter", [b"burst line %07d: some chatter a simulation might print\n" % i
                     for i in range(BURST_LINES)]),
        ("matching", [line_for("output", 0, i + 1) for i in range(MATCHING_LINES)]),
    ):  # fmt: skip
        log.write_bytes(b"".join(lines))
        tail = OutputTail(log, patterns)
        cpu0 = time.process_time()
        records = tail.read_to_end()
        spent = time.process_time() - cpu0
        figures[name] = {"lines": len(lines), "records": len(records), "cpu_seconds": spent}
    return figures


def main() -> int:
    """Run both measures; print a table (and JSON to --json FILE)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        return writer(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_LOAD_SECONDS:g} s of load")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsup-bench-output-") as tmp:
        root = Path(tmp)
        lat = latency(root)
        bursts = burst(root)
        seconds = QUICK_LOAD_SECONDS if args.quick else LOAD_SECONDS
        load = cpu(root, seconds)
        jsonl = cpu(root, seconds, "jsonl")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores")
    print(f"{'figure':<46} {'value':>12}  target")
    print(f"{'line -> record: median':<46} {lat['median_ms']:>9.1f} ms  <= 50 ms")
    print(f"{'line -> record: p99':<46} {lat['p99_ms']:>9.1f} ms  <= 250 ms")
    print(f"{'line -> record: max':<46} {lat['max_ms']:>9.1f} ms")
    print(f"{'  (lines written / records received)':<46} {lat['lines']:>5} / {lat['received']}")
    print(
        f"{f'{LOAD_RUNS} logs x {LOAD_RATE:g} lines/s: reader CPU':<46} "
        f"{load['reader_cpu_percent']:>7.1f} % core  well under 50 %"
    )
    print(
        f"{'  of which the loop thread (reads, matching)':<46} "
        f"{load['loop_thread_cpu_percent']:>7.1f} % core"
    )
    print(
        f"{'  (written lines/s, records / expected)':<46} {load['lines_per_second']:>9,.0f}"
        f"     {load['records']} / {load['expected_records']}"
    )
    print(
        f"{'  the same load as progress.jsonl records':<46} "
        f"{jsonl['reader_cpu_percent']:>7.1f} % core  (ProgressTail, for comparison)"
    )
    print(f"{'    of which the loop thread':<46} {jsonl['loop_thread_cpu_percent']:>7.1f} % core")
    chatter, matching = bursts["chatter"], bursts["matching"]
    print(
        f"{f'a burst of {BURST_LINES:,} chatter lines: CPU':<46} {chatter['cpu_seconds']:>9.2f} s"
    )
    print(
        f"{'a matching line: CPU':<46} {1e6 * matching['cpu_seconds'] / matching['lines']:>9.1f} us"
    )
    if args.json:
        figures = {"latency": lat, "cpu": load, "cpu_jsonl": jsonl, "burst": bursts}
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
