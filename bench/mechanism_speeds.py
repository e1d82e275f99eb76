"""How fast the mechanisms the tests check are: the figures the tests no longer assert.

Usage: .venv/bin/python bench/mechanism_speeds.py [--repeat N]

- watcher stop: how long DirectoryWatcher.stop() takes to end its thread (target < 0.5 s; the
  thread checks its stop event every WATCH_STEP_MS);
- watchdog pings: gaps between WATCHDOG=1 datagrams of `runsup daemon` with WATCHDOG_USEC
  = 400 ms (target: median near half the period, max under the period, or systemd kills it);
- polling progress: how long a progress line takes to reach the row with force_polling and a
  rescan of an hour (only the poller delivers; target < 5 s);
- demo cancel: how long `runsup demo` takes to be gone after SIGINT while its runs go
  (target < 2 s plus the demo's cancel grace).
Everything runs as real processes in a temporary directory and is ended on the way out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import RUNSUP, DaemonHarness, wait_for
from notify_harness import NotifiedDaemon, NotifySocket

from supervisor.progress.dirwatch import DirectoryWatcher

DEFAULT_REPEAT = 10
READY_SECONDS = 10.0
WATCHDOG_USEC = 400_000
WATCHDOG_OBSERVE_SECONDS = 3.0
DEMO_DEADLINE_SECONDS = 60.0
POLL_STEPS = 5
APPENDER = """\
i=1
while [ $i -le "$1" ]; do
  while [ ! -e go$i ]; do sleep 0.02; done
  printf '{"iteration": %d}\\n' $i >> progress.jsonl
  i=$((i+1))
done
"""


def figures(label: str, values: list[float], unit: str = "s") -> str:
    """`label: median X, max Y (n)`."""
    return (
        f"{label}: median {statistics.median(values):.3f} {unit}, max {max(values):.3f} {unit}"
        f" ({len(values)} samples)"
    )


def watcher_stop(tmp: Path, repeat: int) -> list[float]:
    """Seconds per DirectoryWatcher.stop() of a running watcher."""
    took = []
    for n in range(repeat):
        root = tmp / f"watched{n}"
        root.mkdir()
        watcher = DirectoryWatcher([root], lambda: None)
        watcher.start()
        if not watcher.wait_ready(READY_SECONDS):
            raise SystemExit(f"the watcher did not start: {watcher.failed}")
        started = time.monotonic()
        watcher.stop()
        took.append(time.monotonic() - started)
    return took


def watchdog_gaps(tmp: Path) -> list[float]:
    """Seconds between the daemon's WATCHDOG=1 pings over WATCHDOG_OBSERVE_SECONDS."""
    base = tmp / "watchdog"
    base.mkdir()
    harness = DaemonHarness(base)
    sock = NotifySocket(base / "notify.sock")
    daemon = NotifiedDaemon(harness)
    try:
        daemon.start({"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        sock.wait_for("READY=1", lambda note: note.has("READY"))
        notes = sock.collect(WATCHDOG_OBSERVE_SECONDS)
    finally:
        harness.close()
        sock.close()
    times = [n.at for n in notes if n.has("WATCHDOG")]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def polling_latency(tmp: Path) -> list[float]:
    """Seconds from a progress line written to it in the row, with force_polling and an
    hour's rescan."""
    base = tmp / "polling"
    base.mkdir()
    script = base / "appender.sh"
    script.write_text(APPENDER)
    harness = DaemonHarness(
        base, force_polling=True, poll_delay_ms=100, rescan_interval_seconds=3600
    )
    command = json.dumps(["/bin/sh", str(script), str(POLL_STEPS)])
    harness.write_config(f"[templates.appender]\ncommand = {command}\n")
    took = []
    try:
        harness.start()
        run_id = harness.submit({}, template="appender")
        harness.wait_status(run_id, {"RUNNING"})
        for i in range(1, POLL_STEPS + 1):
            started = time.monotonic()
            (harness.runs_dir / run_id / f"go{i}").write_text("")
            wait_for(
                f"iteration {i}",
                lambda i=i: harness.run(run_id).current_iteration == i,  # type: ignore[misc]
            )
            took.append(time.monotonic() - started)
        harness.wait_final(run_id)
    finally:
        harness.close()
    return took


def demo_cancel(tmp: Path) -> float:
    """Seconds from SIGINT to `runsup demo` being gone, with its runs going."""
    home = tmp / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    for name in ("RUNSUP_CONFIG", "RUNSUP_DATABASE", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [str(RUNSUP), "demo", "--state-dir", str(tmp / "demo")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen, end = b"", time.monotonic() + DEMO_DEADLINE_SECONDS
        while b" RUNNING " not in seen:
            if time.monotonic() > end or proc.poll() is not None:
                raise SystemExit(f"the demo never showed a running run:\n{seen.decode()}")
            if select.select([proc.stdout], [], [], 1.0)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
        proc.wait(DEMO_DEADLINE_SECONDS)
        return time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    """Print each figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mechanism-speeds-") as tmp_name:
        tmp = Path(tmp_name)
        print(figures("watcher stop()", watcher_stop(tmp, args.repeat)))
        gaps = watchdog_gaps(tmp)
        period = WATCHDOG_USEC / 1e6
        print(figures(f"watchdog ping gaps (period {period:g} s)", gaps))
        print(figures("progress by polling (rescan 1 h)", polling_latency(tmp)))
        print(f"demo gone after SIGINT: {demo_cancel(tmp):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
