"""What both tails of growing files do alike (supervisor.progress.filetail): progress.jsonl's
ProgressTail and the run log's OutputTail, on real files, FIFOs and symlinks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from sims.fusionsim import ITERATION_PATTERN

from supervisor.progress.filetail import MAX_REFUSAL_LOGS, GrowingFileTail
from supervisor.progress.jsonl import ProgressRecord, ProgressTail
from supervisor.progress.patterns import OutputTail, compile_patterns

MAX_LINE = 256  # small limits, so that long lines and bounded reads are cheap to make
MAX_READ = 1024


@dataclass(frozen=True)
class Kind:
    """One of the two tails: how to make it, a line of it, and its log events' prefix."""

    name: str
    make: Callable[[Path, int], GrowingFileTail[ProgressRecord]]
    line: Callable[[int], bytes]
    events: str

    def long_lines(self, tail: GrowingFileTail[ProgressRecord]) -> int:
        """Over-long lines the tail skipped (progress counts them as bad lines)."""
        counted: int = getattr(tail, "long_lines" if self.name == "output" else "bad_lines")
        return counted


def _progress(path: Path, offset: int) -> GrowingFileTail[ProgressRecord]:
    return ProgressTail(path, offset, max_line_bytes=MAX_LINE, max_read_bytes=MAX_READ, run_id="r")


def _output(path: Path, offset: int) -> GrowingFileTail[ProgressRecord]:
    patterns = compile_patterns([ITERATION_PATTERN])
    return OutputTail(
        path, patterns, offset, max_line_bytes=MAX_LINE, max_read_bytes=MAX_READ, run_id="r"
    )


KINDS = [
    Kind(
        "progress",
        _progress,
        lambda n: json.dumps({"iteration": n}).encode() + b"\n",
        "progress_file",
    ),
    Kind("output", _output, lambda n: b"Iteration %d out of 99 completed\n" % n, "output_log"),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    k: Kind = request.param
    return k


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def iterations(tail: GrowingFileTail[ProgressRecord]) -> list[int | None]:
    return [r.iteration for r in tail.read()]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_partial_line_waits_for_its_newline(kind: Kind, tmp_path: Path) -> None:
    path = tmp_path / "file"
    whole = kind.line(1)
    append(path, kind.line(0) + whole[:5])
    tail = kind.make(path, 0)
    assert iterations(tail) == [0]
    assert tail.offset == len(kind.line(0))  # the held bytes are not consumed yet
    append(path, whole[5:])
    assert iterations(tail) == [1]
    assert tail.offset == path.stat().st_size


def test_a_new_tail_resumes_at_the_offset(kind: Kind, tmp_path: Path) -> None:
    path = tmp_path / "file"
    append(path, kind.line(0) + kind.line(1))
    resumed = kind.make(path, len(kind.line(0)))
    assert iterations(resumed) == [1]


def test_reads_are_bounded_and_read_to_end_reads_all(kind: Kind, tmp_path: Path) -> None:
    path = tmp_path / "file"
    count = 3 * MAX_READ // len(kind.line(0))
    append(path, b"".join(kind.line(i) for i in range(count)))
    tail = kind.make(path, 0)
    first = iterations(tail)
    assert 0 < len(first) < count and tail.more
    assert first + [r.iteration for r in tail.read_to_end()] == list(range(count))
    assert not tail.more


def test_an_over_long_line_is_skipped_without_being_held(kind: Kind, tmp_path: Path) -> None:
    path = tmp_path / "file"
    tail = kind.make(path, 0)
    append(path, b"x" * (MAX_LINE + 1))
    assert iterations(tail) == []
    append(path, b"x" * MAX_LINE)  # still the same line: nothing held, counted once
    assert iterations(tail) == []
    append(path, b"\n" + kind.line(7))
    assert iterations(tail) == [7]
    assert kind.long_lines(tail) == 1


def test_a_missing_file_is_no_refusal_and_the_next_file_there_is_new(
    kind: Kind, tmp_path: Path
) -> None:
    path = tmp_path / "file"
    tail = kind.make(path, 0)
    assert iterations(tail) == [] and tail.refused is None
    append(path, kind.line(0) + kind.line(1))
    assert iterations(tail) == [0, 1]
    path.unlink()
    assert iterations(tail) == [] and tail.refused is None
    # Longer than what was read: a tail that took it for the old file would read on at its
    # place (the kernel may hand out the freed inode number again).
    append(path, kind.line(10) + kind.line(11) + kind.line(12))
    assert iterations(tail) == [10, 11, 12]


def test_a_replaced_file_is_read_from_its_start_and_said(kind: Kind, tmp_path: Path) -> None:
    path, other = tmp_path / "file", tmp_path / "other"
    append(path, kind.line(0) + kind.line(1))
    tail = kind.make(path, 0)
    assert iterations(tail) == [0, 1]
    append(other, kind.line(2) + kind.line(3) + kind.line(4))
    with structlog.testing.capture_logs() as logs:
        os.replace(other, path)
        assert iterations(tail) == [2, 3, 4]
    assert tail.restarts == 1
    assert [e["run_id"] for e in events(logs, f"{kind.events}_replaced")] == ["r"]


def test_refusals_are_logged_once_per_condition_and_readable_again(
    kind: Kind, tmp_path: Path
) -> None:
    path, decoy = tmp_path / "file", tmp_path / "decoy"
    append(decoy, kind.line(99))
    tail = kind.make(path, 0)
    with structlog.testing.capture_logs() as logs:
        path.symlink_to(decoy)
        assert iterations(tail) == [] and iterations(tail) == []
        assert tail.refused is not None and "symlink" in tail.refused
        path.unlink()
        os.mkfifo(path)
        assert iterations(tail) == []  # never opened: an open FIFO would block or read
        path.unlink()
        append(path, kind.line(1))
        assert iterations(tail) == [1]
        assert tail.refused is None
    assert tail.refusals == 3
    refused = events(logs, f"{kind.events}_refused")
    assert ["symlink" in e["reason"] for e in refused] == [True, False]
    assert "fifo" in refused[1]["reason"]
    assert all(e["run_id"] == "r" and e["path"] == str(path) for e in refused)
    assert len(events(logs, f"{kind.events}_readable_again")) == 1


def test_a_file_flipping_on_purpose_cannot_flood_the_log(kind: Kind, tmp_path: Path) -> None:
    path, decoy = tmp_path / "file", tmp_path / "decoy"
    append(decoy, b"")
    tail = kind.make(path, 0)
    with structlog.testing.capture_logs() as logs:
        for i in range(MAX_REFUSAL_LOGS + 5):
            path.unlink(missing_ok=True)
            path.symlink_to(decoy)
            assert iterations(tail) == []
            path.unlink()
            append(path, kind.line(i))
            assert iterations(tail) == [i]
    assert len(events(logs, f"{kind.events}_refused")) == MAX_REFUSAL_LOGS
    assert len(events(logs, f"{kind.events}_refusals_muted")) == 1
