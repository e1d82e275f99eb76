"""logcap: a log past its cap loses its middle, keeps its head and tail, and a writer appending
at the same time is not disturbed (collapse: loses nothing after the cut)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.progress import logcap
from supervisor.progress.logcap import MARKER, bound_log

CAP = 256 * 1024


def fill(path: Path, n_lines: int, start: int = 0) -> None:
    """Append numbered lines of 100 bytes: 'line 000123 xxxx...\\n'."""
    with path.open("ab") as fh:
        for i in range(start, start + n_lines):
            fh.write(f"line {i:06d} ".encode().ljust(99, b"x") + b"\n")


def numbers(data: bytes) -> list[int]:
    """The numbers of the complete, intact lines in data."""
    out = []
    for line in data.split(b"\n"):
        if line.startswith(b"line ") and len(line) == 99:
            out.append(int(line[5:11]))
    return out


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (no FALLOC_FL_COLLAPSE_RANGE there); skipped where mounting is refused."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_small_log_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    fill(log, CAP // 100)
    before = log.read_bytes()
    assert bound_log(log, CAP).removed == 0
    assert log.read_bytes() == before
    assert bound_log(tmp_path / "missing.log", CAP).removed == 0


ON_TMPFS = pytest.param("tmpfs", marks=pytest.mark.tier("mount", "root"))


@pytest.mark.parametrize("where", ["ext4", ON_TMPFS])
def test_large_log_keeps_head_and_tail(tmp_path: Path, where: str, request: Any) -> None:
    base = request.getfixturevalue("tmpfs") if where == "tmpfs" else tmp_path
    log = base / "sim.log"
    fill(log, 10 * CAP // 100)
    cut = bound_log(log, CAP)
    data = log.read_bytes()
    assert cut.removed > 0 and cut.size_after == len(data)
    assert len(data) <= CAP
    assert cut.method == ("copy" if where == "tmpfs" else "collapse")
    head, _, tail = data.partition(MARKER)
    assert numbers(head)[0] == 0 and numbers(head) == list(range(len(numbers(head))))
    kept_tail = numbers(tail)
    assert kept_tail[-1] == 10 * CAP // 100 - 1
    assert kept_tail == list(range(kept_tail[0], kept_tail[-1] + 1))
    assert len(data) >= CAP // 2 - 8192  # about half the cap: not cut again at once
    assert bound_log(log, CAP).removed == 0


def test_fallback_copy_gives_the_same_result(tmp_path: Path, monkeypatch: Any) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    fill(a, 10 * CAP // 100)
    fill(b, 10 * CAP // 100)
    assert bound_log(a, CAP).method == "collapse"
    monkeypatch.setattr(logcap, "_collapse", lambda *_: False)
    assert bound_log(b, CAP).method == "copy"
    assert a.read_bytes() == b.read_bytes()


def test_repeated_cuts_keep_one_marker_and_the_first_head(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    n = 10 * CAP // 100
    for round_ in range(5):
        fill(log, n, start=round_ * n)
        bound_log(log, CAP)
    data = log.read_bytes()
    assert data.count(MARKER) == 1
    assert numbers(data.partition(MARKER)[0])[0] == 0
    assert numbers(data)[-1] == 5 * n - 1


def test_concurrent_appender_loses_nothing_after_a_collapse(tmp_path: Path) -> None:
    """An O_APPEND writer (as the simulation is) keeps writing while the log is cut: every line
    it wrote after the last cut is there, in order, and nothing is torn."""
    log = tmp_path / "sim.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    total = 60_000
    stop = threading.Event()

    def write() -> None:
        for i in range(total):
            os.write(fd, f"line {i:06d} ".encode().ljust(99, b"x") + b"\n")
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    cuts = 0
    while not stop.is_set():
        cuts += bool(bound_log(log, CAP).removed)
    writer.join()
    os.close(fd)
    cuts += bool(bound_log(log, CAP).removed)
    data = log.read_bytes()
    assert cuts >= 2
    assert len(data) <= CAP
    tail = numbers(data.partition(MARKER)[2])
    assert tail[-1] == total - 1
    assert tail == list(range(tail[0], total)), "a line written during a cut was lost or moved"


def test_symlink_fifo_and_directory_are_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    fill(victim, 10 * CAP // 100)
    before = victim.read_bytes()
    link = tmp_path / "link.log"
    link.symlink_to(victim)
    assert bound_log(link, CAP).removed == 0
    assert victim.read_bytes() == before
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    assert bound_log(fifo, CAP).removed == 0  # and does not block
    (tmp_path / "dir.log").mkdir()
    assert bound_log(tmp_path / "dir.log", CAP).removed == 0


def test_cap_below_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        bound_log(tmp_path / "x", logcap.MIN_CAP_BYTES - 1)


def test_settings_carry_the_cap_and_refuse_a_tiny_one(tmp_path: Path) -> None:
    from supervisor.errors import ConfigError
    from supervisor.settings import MIN_MAX_LOG_BYTES, load_settings

    assert MIN_MAX_LOG_BYTES == logcap.MIN_CAP_BYTES
    config = tmp_path / "c.toml"
    config.write_text("max_log_bytes = 1048576\nwal_checkpoint_bytes = 65536\n")
    settings = load_settings(config, environ={})
    assert (settings.max_log_bytes, settings.wal_checkpoint_bytes) == (1048576, 65536)
    config.write_text("max_log_bytes = 1000\n")
    with pytest.raises(ConfigError, match="max_log_bytes"):
        load_settings(config, environ={})
