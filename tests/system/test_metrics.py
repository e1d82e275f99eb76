"""`runsup metrics` and the daemon's /metrics (SPEC section 14), with the installed command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RUNSUP, RUNSUP_TIMEOUT_SECONDS
from daemon_harness import DaemonHarness, pid_alive, wait_for
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from supervisor.db import utcnow
from supervisor.executors.local import cgroups

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HTTP_TIMEOUT_SECONDS = 10.0
TEXTFILE_WRITES = 5


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A config, database and runs dir; the daemon is started by the test."""
    made = DaemonHarness(tmp_path)
    yield made
    made.close()


def parse(text_format: str) -> Samples:
    """Every sample of a scrape, keyed by name and labels (the parser checks the format)."""
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(text_format)
        for s in family.samples
    }


def scrape(h: DaemonHarness, *args: str) -> subprocess.CompletedProcess[str]:
    """`runsup metrics ARGS` against the harness's configuration."""
    return subprocess.run(
        [str(RUNSUP), "--config", str(h.config), "metrics", *args],
        capture_output=True,
        text=True,
        timeout=RUNSUP_TIMEOUT_SECONDS,
        check=False,
    )


def metrics(h: DaemonHarness) -> Samples:
    """One scrape through the command; it must succeed."""
    done = scrape(h)
    assert done.returncode == 0, done.stderr
    return parse(done.stdout)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (`le` included for buckets)."""
    return samples[(name, frozenset(labels.items()))]


def insert_row(h: DaemonHarness, run_id: str, status: str, **cols: object) -> None:
    """A row written the way another program would (raw SQL)."""
    stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    values = {"id": run_id, "status": status, "config_json": "{}", "template": "testsim"}
    values |= {"created_at": stamp, **cols}
    names, marks = ", ".join(values), ", ".join(f":{k}" for k in values)
    with h.store.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO runs ({names}) VALUES ({marks})"), values)


def test_each_metric_moves_as_runs_move(harness: DaemonHarness, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    progress = [{"type": "iteration", "erlang": 1.0, "iteration": 1, "total_iterations": 9}]
    run_id = harness.submit({"progress": progress, "wait_for_file": str(gate)})

    queued = metrics(harness)
    assert value(queued, "runsup_runs", status="PENDING") == 1
    assert value(queued, "runsup_runs", status="RUNNING") == 0
    assert value(queued, "runsup_oldest_pending_seconds") > 0
    assert value(queued, "runsup_daemon_heartbeat_timestamp_seconds") == 0
    assert value(queued, "runsup_queue_wait_seconds_count", template="testsim") == 0

    harness.start()
    harness.wait_set_up(run_id)
    running = wait_for(
        "the heartbeat and a progress age",
        lambda: (
            m
            if value(m := metrics(harness), "runsup_progress_age_seconds") > 0
            and value(m, "runsup_daemon_heartbeat_timestamp_seconds") > 0
            else None
        ),
    )
    assert value(running, "runsup_runs", status="RUNNING") == 1
    assert value(running, "runsup_runs", status="PENDING") == 0
    assert value(running, "runsup_oldest_pending_seconds") == 0
    assert value(running, "runsup_queue_wait_seconds_count", template="testsim") == 1
    assert abs(value(running, "runsup_daemon_heartbeat_timestamp_seconds") - time.time()) < 60

    gate.touch()
    harness.wait_final(run_id)
    done = metrics(harness)
    assert value(done, "runsup_runs", status="COMPLETED") == 1
    assert value(done, "runsup_runs_finished_total", template="testsim", status="COMPLETED") == 1
    assert value(done, "runsup_run_duration_seconds_count", template="testsim") == 1
    assert value(done, "runsup_run_duration_seconds_bucket", template="testsim", le="+Inf") == 1
    assert value(done, "runsup_progress_age_seconds") == 0
    assert value(done, "runsup_out_of_memory_total", template="testsim") == 0

    # A run killed for its memory cap: test_a_run_killed_by_its_memory_cap_is_counted below.

    # Counters come from final rows: a restarted daemon's figures go on from where they were.
    assert harness.stop() == 0
    assert value(metrics(harness), "runsup_runs_finished_total", template="testsim",
                 status="COMPLETED") == 1  # fmt: skip


HOG = (
    "import sys\n"
    "chunks = []\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    chunks.append(bytearray(1024 * 1024))\n"
    "    chunks[-1][::4096] = b'x' * len(chunks[-1][::4096])\n"
)
HOG_MIB = 400  # what the hog allocates, well past its cap
HOG_CAP = "64M"


@pytest.mark.tier("cgroup")
def test_a_run_killed_by_its_memory_cap_is_counted(harness: DaemonHarness) -> None:
    """The real path: a capped run the kernel kills, the daemon's verdict, the scrape."""
    if not cgroups.detect().enforced:
        pytest.skip("this machine offers no memory caps (the cgroup tier needs them)")
    script = harness.tmp / "hog.py"
    script.write_text(HOG)
    command = json.dumps([sys.executable, str(script), str(HOG_MIB)])
    harness.write_config(f'[templates.hog]\ncommand = {command}\nmemory_max = "{HOG_CAP}"\n')
    harness.start()
    rec = harness.wait_final(harness.submit({}, template="hog"))
    assert rec.status == "FAILED" and rec.exit_signal == signal.SIGKILL, rec
    assert (rec.error_message or "").startswith("out of memory"), rec.error_message
    killed = metrics(harness)
    assert value(killed, "runsup_out_of_memory_total", template="hog") == 1
    assert value(killed, "runsup_runs_finished_total", template="hog", status="FAILED") == 1
    assert value(killed, "runsup_out_of_memory_total", template="testsim") == 0


def test_reserved_resources_of_running_rows(harness: DaemonHarness) -> None:
    resources = '[resources]\ncpus = 8\ngpus = ["0", "1", "2"]\nmemory = "4G"'
    harness.write_config(resources)
    idle = metrics(harness)
    assert value(idle, "runsup_resource_capacity", resource="cpus") == 8
    assert value(idle, "runsup_resource_capacity", resource="gpus") == 3
    assert value(idle, "runsup_resource_capacity", resource="memory_bytes") == 4 << 30
    assert value(idle, "runsup_resource_reserved", resource="cpus") == 0

    insert_row(harness, "00000000000b", "RUNNING", cpus=2, gpu_ids="1", memory_max_bytes=1 << 30)
    insert_row(harness, "00000000000c", "RUNNING", cpus=1, gpu_ids="0,2")
    held = metrics(harness)
    assert value(held, "runsup_resource_reserved", resource="cpus") == 3
    assert value(held, "runsup_resource_reserved", resource="gpus") == 3
    assert value(held, "runsup_resource_reserved", resource="memory_bytes") == 1 << 30
    assert value(held, "runsup_runs", status="RUNNING") == 2


def test_hostile_rows_neither_break_a_scrape_nor_add_labels(harness: DaemonHarness) -> None:
    for i in range(50):
        insert_row(harness, f"f{i:011d}", "COMPLETED", template=f"made-up-{i}",
                   started_at="soon", completed_at="\x00")  # fmt: skip
    insert_row(harness, "00000000000d", "PENDING", created_at="yesterday")
    insert_row(harness, "00000000000e", "RUNNING", started_at=12, cpus="many", gpu_ids=",,")
    insert_row(harness, "00000000000f", "LIMBO", template='quo"te\nnew line')
    samples = metrics(harness)
    templates = {dict(labels).get("template") for _, labels in samples} - {None}
    assert templates == {"testsim", "sh", "erlang-demo", "other"}
    assert value(samples, "runsup_runs_finished_total", template="other", status="COMPLETED") == 50
    # Their timestamps are garbage: no duration is counted, and no series made for it.
    assert ("runsup_run_duration_seconds_count", frozenset({("template", "other")})) not in samples
    assert value(samples, "runsup_oldest_pending_seconds") == 0
    assert value(samples, "runsup_resource_reserved", resource="cpus") == 0


def test_textfile_is_replaced_atomically(harness: DaemonHarness, tmp_path: Path) -> None:
    folder = tmp_path / "textfile"
    folder.mkdir()
    target = folder / "runsup.prom"
    target.write_text("# an older scrape\n")
    seen: set[str] = set()  # every distinct content a reader found at the path
    stop = threading.Event()

    def read_all_the_time() -> None:
        while not stop.is_set():
            seen.add(target.read_text())

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for _ in range(TEXTFILE_WRITES):
            # Held open, the file at the path keeps its inode (no reuse by the next file).
            with target.open("rb") as before:
                done = scrape(harness, "--textfile", str(target))
                assert done.returncode == 0, done.stderr
                assert done.stdout == ""
                # A new file was renamed over the target, not the old one rewritten.
                assert os.fstat(before.fileno()).st_ino != target.stat().st_ino
    finally:
        stop.set()
        reader.join()
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in folder.iterdir()] == ["runsup.prom"]  # no temporary file left
    full = seen - {"# an older scrape\n"}
    assert full, "the reader never saw a written file"
    for content in full:  # never a partial file: each read is a whole scrape
        assert content.endswith("\n")
        assert ("runsup_daemon_heartbeat_timestamp_seconds", frozenset()) in parse(content)


def test_textfile_that_cannot_be_written_is_one_line(
    harness: DaemonHarness, tmp_path: Path
) -> None:
    done = scrape(harness, "--textfile", str(tmp_path / "missing" / "runsup.prom"))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("runsup: error: --textfile ")
    assert "No such file or directory" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def test_daemon_serves_metrics_over_http(harness: DaemonHarness) -> None:
    port = _free_port()
    harness.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"')
    harness.submit({"exit_code": 0})
    harness.start()
    url = f"http://127.0.0.1:{port}/metrics"
    served = wait_for(
        "a finished run on /metrics",
        lambda: (
            s
            if (body := _get(url)) is not None
            and value(s := parse(body), "runsup_runs", status="COMPLETED") == 1
            else None
        ),
    )
    assert value(served, "runsup_daemon_heartbeat_timestamp_seconds") > 0
    logged = harness.wait_logged("metrics_serving", address=f"127.0.0.1:{port}")
    assert harness.stop() == 0
    # The server goes with the daemon: nothing listens there any more.
    wait_for("the server to stop", lambda: _get(url) is None or None)
    assert isinstance(logged["pid"], int)


def test_port_in_use_refuses_to_start_with_one_line(harness: DaemonHarness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        harness.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"')
        harness.start(wait_ready=False)
        assert harness.wait_exit() == 1
    lines = [line for line in harness.log_text().splitlines() if line.startswith("runsup:")]
    assert lines == [
        f"runsup: error: [metrics] listen = '127.0.0.1:{port}': cannot listen there: "
        "Address already in use"
    ]
    assert "daemon_ready" not in harness.log_text()
    assert json.dumps("daemon_ready") not in harness.log_text()


def test_server_is_restarted_if_it_dies_and_goes_when_the_daemon_dies(
    harness: DaemonHarness,
) -> None:
    port = _free_port()
    harness.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"')
    harness.start()
    url = f"http://127.0.0.1:{port}/metrics"
    first = harness.wait_logged("metrics_serving")
    os.kill(first["pid"], signal.SIGKILL)
    died = harness.wait_logged("metrics_server_died", returncode=-signal.SIGKILL)
    assert died["address"] == f"127.0.0.1:{port}"
    again = wait_for(
        "a second server",
        lambda: next(
            (e for e in harness.log_events() if e["event"] == "metrics_serving" and e != first),
            None,
        ),
    )
    assert again["pid"] != first["pid"]
    assert wait_for("the endpoint to answer again", lambda: _get(url))
    # A daemon killed outright: its server reads end-of-file on stdin and goes too.
    harness.kill()
    wait_for("the server to go with the daemon", lambda: _get(url) is None or None)
    wait_for("the server process to end", lambda: not pid_alive(again["pid"]) or None)
