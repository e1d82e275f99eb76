"""Tests of supervisor.progress.dirwatch.DirectoryWatcher with real inotify, real files, real
threads."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from supervisor.progress.dirwatch import DirectoryWatcher

if TYPE_CHECKING:
    from conftest import JsonLog

DEADLINE_S = 5.0  # generous: a loaded CI machine, while a change normally lands in ~40 ms
READY_TIMEOUT_S = 5.0
QUICK_RESTART_S = 0.05  # a test's restart backoff: the default waits seconds


def wait_for(cond: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Collector:
    """Counts wake() calls and gathers drained paths."""

    def __init__(self) -> None:
        """Start with nothing seen."""
        self.wakes = 0
        self.seen: set[Path] = set()
        self._lock = threading.Lock()

    def wake(self) -> None:
        """The callback the watcher calls after each batch (from its own thread)."""
        with self._lock:
            self.wakes += 1

    def drained(self, watcher: DirectoryWatcher, path: Path) -> bool:
        """Drain the watcher and tell whether `path` has been reported so far."""
        self.seen |= watcher.drain()
        return path in self.seen


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs directory with one run subdirectory holding an empty progress file."""
    run = tmp_path / "runs" / "run-1"
    run.mkdir(parents=True)
    (run / "progress.jsonl").write_bytes(b"")
    return tmp_path / "runs"


@pytest.fixture
def collector() -> Collector:
    """A fresh wake() collector."""
    return Collector()


@pytest.fixture
def watcher(runs: Path, collector: Collector) -> Iterator[DirectoryWatcher]:
    """A started watcher over the runs directory, stopped at the end of the test."""
    w = DirectoryWatcher([runs], collector.wake)
    w.start()
    assert w.wait_ready(READY_TIMEOUT_S), w.failed
    yield w
    w.stop()


def test_append_in_subdirectory_is_reported(
    runs: Path, watcher: DirectoryWatcher, collector: Collector
) -> None:
    """An append to a run's progress file wakes the daemon and is drained as that path."""
    progress = runs / "run-1" / "progress.jsonl"
    with progress.open("ab") as fh:
        fh.write(b'{"iteration": 1}\n')
    assert wait_for(lambda: collector.drained(watcher, progress))
    assert collector.wakes >= 1
    assert watcher.failed is None
    collector.seen.clear()
    wakes = collector.wakes
    with progress.open("ab") as fh:
        fh.write(b'{"iteration": 2}\n')
    assert wait_for(lambda: collector.drained(watcher, progress))
    assert collector.wakes > wakes


def test_new_run_directory_and_dotfiles_are_reported(
    runs: Path, watcher: DirectoryWatcher, collector: Collector
) -> None:
    """Subdirectories created after start are watched too, and no name is filtered out."""
    run = runs / "run-2"
    run.mkdir()
    hidden = run / ".progress.jsonl.swp"
    assert wait_for(lambda: collector.drained(watcher, run))
    # the new directory's watch is added by notify asynchronously: write until seen
    deadline = time.monotonic() + DEADLINE_S
    while not collector.drained(watcher, hidden) and time.monotonic() < deadline:
        with hidden.open("ab") as fh:
            fh.write(b"x\n")
        wait_for(lambda: collector.drained(watcher, hidden), timeout=0.2)
    assert hidden in collector.seen


def test_drain_hands_out_each_path_once(
    runs: Path, watcher: DirectoryWatcher, collector: Collector
) -> None:
    """A drained path is gone from the next drain until it changes again."""
    progress = runs / "run-1" / "progress.jsonl"
    progress.write_bytes(b"{}\n")
    assert wait_for(lambda: collector.drained(watcher, progress))
    assert progress not in watcher.drain()


def test_stop_returns_promptly(watcher: DirectoryWatcher) -> None:
    """stop() ends the thread (by the stop event it checks every step: the join's timeout would
    leave it alive and log watch_stop_timeout); a second stop() is harmless. How long it takes
    is a figure: bench/mechanism_speeds.py."""
    thread = watcher._thread  # this watcher's own thread: other tests may run watchers too
    assert thread is not None and thread.is_alive()
    watcher.stop()
    assert not thread.is_alive()
    assert watcher.failed is None
    watcher.stop()


def test_missing_path_sets_failed_and_creates_nothing(tmp_path: Path) -> None:
    """Watching a path that does not exist does not raise, start no thread, and create nothing."""
    missing = tmp_path / "no" / "such" / "dir"
    wakes: list[int] = []
    w = DirectoryWatcher([missing], lambda: wakes.append(1))
    w.start()
    assert w.failed is not None and str(missing) in w.failed
    assert not w.wait_ready(0.1)
    assert not (tmp_path / "no").exists()
    assert w.drain() == set()
    w.stop()


def test_removed_root_sets_failed_and_wakes(runs: Path, collector: Collector) -> None:
    """inotify goes silent on a removed directory: the watcher notices, fails and wakes."""
    w = DirectoryWatcher([runs], collector.wake)
    w.start()
    assert w.wait_ready(READY_TIMEOUT_S)
    try:
        shutil.rmtree(runs)
        assert wait_for(lambda: w.failed is not None)
        assert "runs" in (w.failed or "")
        assert wait_for(lambda: collector.wakes >= 1)
    finally:
        w.stop()


def test_undecodable_file_name_sets_failed(runs: Path, collector: Collector) -> None:
    """watchfiles dies on a non-UTF-8 file name; that is reported, not raised."""
    w = DirectoryWatcher([runs], collector.wake)
    w.start()
    assert w.wait_ready(READY_TIMEOUT_S)
    try:
        bad = os.path.join(os.fsencode(runs), b"bad-\xff-name")
        with open(bad, "wb"):
            pass
        assert wait_for(lambda: w.failed is not None)
        assert not w.wait_ready(0)
    finally:
        w.stop()


def test_death_is_logged_as_an_error_with_the_path(
    runs: Path, collector: Collector, json_log: JsonLog
) -> None:
    """A watch that died says so at error level, naming the path and the error (defect 6)."""
    w = DirectoryWatcher([runs], collector.wake)
    w.start()
    assert w.wait_ready(READY_TIMEOUT_S)
    try:
        shutil.rmtree(runs)
        assert wait_for(lambda: bool(json_log.events("watcher_died")))
        [died] = json_log.events("watcher_died")
        assert died["level"] == "error"
        assert died["path"] == str(runs)
        assert "gone" in died["error"] and died["error"] == w.failed
    finally:
        w.stop()


def test_restarts_once_the_path_is_back(
    runs: Path, collector: Collector, json_log: JsonLog
) -> None:
    """A directory removed and made again is watched again; `failed` clears, events flow."""
    seen_failed: list[str | None] = []  # `failed` at each wake()
    w = DirectoryWatcher(
        [runs], lambda: seen_failed.append(w.failed), restart_first_s=QUICK_RESTART_S
    )
    w.start()
    assert w.wait_ready(READY_TIMEOUT_S)
    try:
        shutil.rmtree(runs)
        assert wait_for(lambda: w.failed is not None)
        runs.mkdir()
        assert wait_for(lambda: w.failed is None)
        assert w.wait_ready(READY_TIMEOUT_S)
        [back] = json_log.events("watcher_restarted")
        assert back["path"] == str(runs)
        # One wake when it died, one when it is back (the daemon rescans what it missed).
        died = next(i for i, failed in enumerate(seen_failed) if failed is not None)
        assert None in seen_failed[died + 1 :], seen_failed
        fresh = runs / "run-3"
        fresh.mkdir()
        assert wait_for(lambda: collector.drained(w, fresh))
    finally:
        w.stop()


def test_stop_ends_a_dead_watcher_waiting_to_restart(runs: Path, collector: Collector) -> None:
    """stop() also ends a thread that waits for its path to come back."""
    w = DirectoryWatcher([runs], collector.wake)  # the default backoff: seconds
    w.start()
    assert w.wait_ready(READY_TIMEOUT_S)
    thread = w._thread
    assert thread is not None
    shutil.rmtree(runs)
    assert wait_for(lambda: w.failed is not None)
    w.stop()
    assert not thread.is_alive()
