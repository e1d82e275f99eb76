"""A progress file swapped for a symlink or a FIFO: refused, said once in the log, read again
once it is a regular file again (issue 11, defect 6).

Real files, a real FIFO, and the project's own structlog set-up writing JSON lines to a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.progress import filetail
from supervisor.progress.jsonl import ProgressTail

if TYPE_CHECKING:
    from conftest import JsonLog

RUN_ID = "0123456789ab"
REFUSED = "progress_file_refused"
READABLE = "progress_file_readable_again"


def line(iteration: int) -> bytes:
    """One good progress line."""
    return json.dumps({"iteration": iteration}).encode() + b"\n"


def make_regular(path: Path, data: bytes) -> None:
    """Put a regular file with `data` where `path` is, whatever is there now."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def make_symlink(path: Path, target: Path) -> None:
    """Replace `path` by a symlink to `target` (a valid progress file: still refused)."""
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def make_fifo(path: Path) -> None:
    """Replace `path` by a FIFO nobody writes to."""
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def iterations(tail: ProgressTail) -> list[int | None]:
    """The iterations of the records one read returns."""
    return [r.iteration for r in tail.read()]


def test_symlink_and_fifo_are_logged_once_each_and_good_lines_read_after(
    tmp_path: Path, json_log: JsonLog
) -> None:
    """Each refusal is logged once while it lasts, with the path; good lines after it are read."""
    path = tmp_path / "progress.jsonl"
    decoy = tmp_path / "decoy.jsonl"
    decoy.write_bytes(line(99))
    make_regular(path, line(1))
    tail = ProgressTail(path)
    assert iterations(tail) == [1]

    make_symlink(path, decoy)
    for _ in range(3):  # refused on every read, logged on the first only
        assert iterations(tail) == []
    refused = json_log.events(REFUSED)
    assert len(refused) == 1, refused
    assert refused[0]["path"] == str(path) and refused[0]["level"] == "warning"
    assert "symlink" in refused[0]["reason"]

    make_regular(path, line(2) + line(3))
    assert iterations(tail) == [2, 3]
    assert len(json_log.events(READABLE)) == 1

    make_fifo(path)
    for _ in range(3):
        assert iterations(tail) == []
    refused = json_log.events(REFUSED)
    assert len(refused) == 2, refused
    assert "fifo" in refused[1]["reason"]

    make_regular(path, line(4))
    assert iterations(tail) == [4]
    with path.open("ab") as fh:
        fh.write(line(5))
    assert iterations(tail) == [5]

    # The same condition again after the file was good in between: said again.
    make_symlink(path, decoy)
    assert iterations(tail) == []
    assert len(json_log.events(REFUSED)) == 3
    assert len(json_log.events(READABLE)) == 2


def test_refusal_carries_the_run_id_when_given(tmp_path: Path, json_log: JsonLog) -> None:
    """The daemon passes the run id; the event names the run."""
    path = tmp_path / "progress.jsonl"
    make_fifo(path)
    tail = ProgressTail(path, run_id=RUN_ID)
    assert iterations(tail) == []
    [refused] = json_log.events(REFUSED)
    assert refused["run_id"] == RUN_ID


def test_missing_file_in_between_is_not_a_new_condition(tmp_path: Path, json_log: JsonLog) -> None:
    """A FIFO removed and made again (missing in between) is the same refusal: one line."""
    path = tmp_path / "progress.jsonl"
    make_fifo(path)
    tail = ProgressTail(path)
    assert iterations(tail) == []
    path.unlink()
    assert iterations(tail) == []
    make_fifo(path)
    assert iterations(tail) == []
    assert len(json_log.events(REFUSED)) == 1
    assert tail.refusals == 2


def test_a_file_flipping_on_purpose_cannot_flood_the_log(tmp_path: Path, json_log: JsonLog) -> None:
    """Past MAX_REFUSAL_LOGS refusals a tail says once that it stops logging them."""
    path = tmp_path / "progress.jsonl"
    decoy = tmp_path / "decoy.jsonl"
    decoy.write_bytes(b"")
    tail = ProgressTail(path)
    for i in range(filetail.MAX_REFUSAL_LOGS + 5):
        make_symlink(path, decoy)
        assert iterations(tail) == []
        make_regular(path, line(i))
        assert iterations(tail) == [i]
    assert len(json_log.events(REFUSED)) == filetail.MAX_REFUSAL_LOGS
    assert len(json_log.events("progress_file_refusals_muted")) == 1
