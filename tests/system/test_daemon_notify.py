"""sd_notify from the real `runsup daemon` process, read off a real datagram socket.

The daemon is started as systemd would start it: NOTIFY_SOCKET names a socket we bound,
WATCHDOG_USEC/WATCHDOG_PID as systemd sets them. Every datagram is one notification; the
tests check READY/STATUS, the watchdog period and its pid rule, RELOADING/READY around
SIGHUP, STOPPING on SIGTERM, and that none of these variables reach a simulation.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonHarness, wait_for
from notify_harness import (
    SYSTEMD_VARIABLES,
    Notification,
    NotifiedDaemon,
    NotifySocket,
)

WATCHDOG_USEC = 400_000
"""A short watchdog period (0.4 s): the daemon should ping every 0.2 s."""
WATCHDOG_PINGS = 4  # pings the watchdog test waits for
"""How long to listen for pings that must not come (2.5 periods)."""
RECV_BYTES = 65536
ENV_DUMP_TEMPLATE = """
[templates.envdump]
command = ["{python}", "-c", "import json, os; json.dump(dict(os.environ), open('env.json', 'w'))"]
"""


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """Config, database and runs dir in tmp; the daemon and its runs are killed after."""
    h = DaemonHarness(tmp_path, max_concurrent_runs=1)
    h.write_config(ENV_DUMP_TEMPLATE)
    yield h
    h.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notification socket at a path in tmp."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def ready(note: Notification) -> bool:
    return note.has("READY")


def status_is(text: str) -> Callable[[Notification], bool]:
    return lambda note: note.get("STATUS") == text


def test_ready_with_status_then_status_follows_the_runs(
    harness: DaemonHarness, notify_socket: NotifySocket
) -> None:
    daemon = NotifiedDaemon(harness)
    daemon.start({"NOTIFY_SOCKET": notify_socket.address})
    first = notify_socket.wait_for("READY=1", ready)
    assert first is notify_socket.received[0], "READY=1 is the first notification"
    assert first.get("STATUS") == "0 running, 0 pending", first

    release = harness.tmp / "release"
    run_a = harness.submit({"wait_for_file": str(release)})
    notify_socket.wait_for("1 running", status_is("1 running, 0 pending"))
    harness.wait_status(run_a, {"RUNNING"})
    run_b = harness.submit({"wait_for_file": str(release)})
    notify_socket.wait_for("1 running, 1 pending", status_is("1 running, 1 pending"))

    release.touch()
    assert harness.wait_final(run_a).status == "COMPLETED"
    assert harness.wait_final(run_b).status == "COMPLETED"
    notify_socket.wait_for("0 running", status_is("0 running, 0 pending"))
    # No WatchdogSec: the daemon decided, and logged, that it pings no watchdog.
    decided = harness.wait_logged("sd_notify_enabled")
    assert decided["watchdog_ping_seconds"] is None and decided["watchdog_usec"] is None
    assert not any(n.has("WATCHDOG") for n in notify_socket.received), "no WatchdogSec, no ping"

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_status_says_when_file_watching_died_and_when_it_is_back(
    harness: DaemonHarness, notify_socket: NotifySocket
) -> None:
    """A dead watcher shows in STATUS= until it watches again (issue 11, defect 6)."""
    # Another folder beside runs/ and runs.db: the daemon then watches runs/ on its own (in the
    # default layout one watch of their folder sees both and outlives runs/ being replaced).
    (harness.tmp / "elsewhere").mkdir()
    daemon = NotifiedDaemon(harness)
    daemon.start({"NOTIFY_SOCKET": notify_socket.address})
    notify_socket.wait_for("READY=1", ready)
    # Replace the watched runs directory; an event on the old one makes the watcher notice.
    runs, old = harness.runs_dir, harness.tmp / "runs.old"
    runs.rename(old)
    runs.mkdir()
    (old / "poke").write_text("")
    down = notify_socket.wait_for(
        "file watching down", lambda n: "watching down" in (n.get("STATUS") or "")
    )
    assert str(runs) in (down.get("STATUS") or ""), down
    wait_for("watcher_died in the log", lambda: "watcher_died" in harness.log_text())
    # The new directory exists: after its backoff the watcher watches it, and STATUS says so.
    notify_socket.wait_for("STATUS back to normal", status_is("0 running, 0 pending"))
    wait_for("watcher_restarted in the log", lambda: "watcher_restarted" in harness.log_text())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_abstract_notify_socket_is_supported(harness: DaemonHarness) -> None:
    sock = NotifySocket(abstract=f"runsup-test-{uuid.uuid4().hex}")
    try:
        daemon = NotifiedDaemon(harness)
        daemon.start({"NOTIFY_SOCKET": sock.address})
        assert sock.wait_for("READY=1", ready).get("STATUS") == "0 running, 0 pending"
        daemon.signal(signal.SIGTERM)
        sock.wait_for("STOPPING=1", lambda n: n.has("STOPPING"))
        assert daemon.wait() == 0
    finally:
        sock.close()


def ping_gaps(notes: list[Notification]) -> list[float]:
    times = [n.at for n in notes if n.has("WATCHDOG")]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.parametrize("watchdog_pid", ["unset", "daemon"])
def test_watchdog_pings_at_half_the_period(
    harness: DaemonHarness, notify_socket: NotifySocket, watchdog_pid: str
) -> None:
    daemon = NotifiedDaemon(harness)
    daemon.start(
        {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        watchdog_pid_is_self=watchdog_pid == "daemon",
    )
    notify_socket.wait_for("READY=1", ready)
    # The mechanism: the daemon took half the period as its ping interval, and pings come
    # (the gaps between them under load are a figure: bench/mechanism_speeds.py).
    decided = harness.wait_logged("sd_notify_enabled")
    assert decided["watchdog_ping_seconds"] == WATCHDOG_USEC / 1e6 / 2, decided
    for _ in range(WATCHDOG_PINGS):
        notify_socket.wait_for("a watchdog ping", lambda note: note.has("WATCHDOG"))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_watchdog_pid_of_another_process_means_no_pings(
    harness: DaemonHarness, notify_socket: NotifySocket
) -> None:
    daemon = NotifiedDaemon(harness)
    other = os.getpid()  # certainly alive and certainly not the daemon
    daemon.start(
        {
            "NOTIFY_SOCKET": notify_socket.address,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "WATCHDOG_PID": str(other),
        }
    )
    notify_socket.wait_for("READY=1", ready)
    # The watchdog is another process's: the daemon decided not to ping, and says so.
    decided = harness.wait_logged("sd_notify_enabled")
    assert decided["watchdog_ping_seconds"] is None, decided
    assert decided["watchdog_pid"] == str(other)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert not any(n.has("WATCHDOG") for n in notify_socket.received)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.mark.parametrize("config", ["good", "broken"])
def test_sighup_sends_reloading_with_monotonic_usec_then_ready(
    harness: DaemonHarness, notify_socket: NotifySocket, config: str
) -> None:
    daemon = NotifiedDaemon(harness)
    daemon.start({"NOTIFY_SOCKET": notify_socket.address})
    notify_socket.wait_for("READY=1", ready)
    if config == "broken":
        harness.config.write_text("max_concurrent_runs = [not toml\n")
    before = monotonic_usec()
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", lambda n: n.has("RELOADING"))
    after = monotonic_usec()
    stamp = reloading.get("MONOTONIC_USEC")
    assert stamp is not None and stamp.isdigit(), reloading
    assert before <= int(stamp) <= after, (before, stamp, after)
    done = notify_socket.wait_for("READY=1 after the reload", ready)
    assert done.get("STATUS") == "0 running, 0 pending", done
    event = "config_reloaded" if config == "good" else "reload_refused"
    wait_for(event, lambda: event in harness.log_text())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_sigterm_sends_stopping(harness: DaemonHarness, notify_socket: NotifySocket) -> None:
    daemon = NotifiedDaemon(harness)
    daemon.start({"NOTIFY_SOCKET": notify_socket.address})
    notify_socket.wait_for("READY=1", ready)
    release = harness.tmp / "release"
    run_id = harness.submit({"wait_for_file": str(release)})
    notify_socket.wait_for("1 running", status_is("1 running, 0 pending"))
    daemon.signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", lambda n: n.has("STOPPING"))
    assert daemon.wait() == 0
    notify_socket.collect(0.1)  # what the daemon sent before exiting is queued already
    stops = [i for i, n in enumerate(notify_socket.received) if n.has("STOPPING")]
    assert not any(n.has("READY") for n in notify_socket.received[stops[0] :])
    # The last STATUS= is what `systemctl status` keeps showing after the stop.
    last_status = [n.get("STATUS") for n in notify_socket.received if n.get("STATUS")][-1]
    assert last_status == "stopped, 1 left running"
    assert harness.run(run_id).status == "RUNNING", "on_stop=detach leaves it running"
    release.touch()


def environ_of(pid: int) -> dict[str, str]:
    """A live process's environment, from /proc."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_notify_and_watchdog_variables_never_reach_a_run(
    harness: DaemonHarness, notify_socket: NotifySocket
) -> None:
    daemon = NotifiedDaemon(harness)
    daemon.start(
        {
            "NOTIFY_SOCKET": notify_socket.address,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "INVOCATION_ID": uuid.uuid4().hex,
        },
        watchdog_pid_is_self=True,
    )
    notify_socket.wait_for("READY=1", ready)
    assert daemon.proc is not None
    assert environ_of(daemon.proc.pid)["WATCHDOG_PID"] == str(daemon.proc.pid)

    release = harness.tmp / "release"
    held = harness.submit({"wait_for_file": str(release)})
    record = harness.wait_status(held, {"RUNNING"})
    assert record.pid is not None
    processes = [record.pid]
    if record.keeper_pid is not None:
        processes.append(record.keeper_pid)
    for pid in processes:
        leaked = set(SYSTEMD_VARIABLES) & set(environ_of(pid))
        assert not leaked, f"pid {pid} got {leaked}"
    release.touch()
    assert harness.wait_final(held).status == "COMPLETED"

    dumped = harness.submit({}, template="envdump")
    final = harness.wait_final(dumped)
    assert final.status == "COMPLETED", final.error_message
    env = json.loads((harness.runs_dir / dumped / "env.json").read_text())
    assert not {*SYSTEMD_VARIABLES, "INVOCATION_ID"} & set(env), sorted(env)
    assert env["RUNSUP_RUN_ID"] == dumped
    assert env["PYTHONUNBUFFERED"] == "1"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
