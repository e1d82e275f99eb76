"""Copying a run's log: incremental, robust to the daemon's log cut and to planted files."""

from __future__ import annotations

import io
import os
from pathlib import Path

from supervisor.cli.logview import _copy_new


def test_copies_only_what_is_new(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_bytes(b"one\n")
    out, err = io.BytesIO(), io.StringIO()
    offset = _copy_new(log, 0, out, err)
    with log.open("ab") as fh:
        fh.write(b"two\n")
    offset = _copy_new(log, offset, out, err)
    assert out.getvalue() == b"one\ntwo\n"
    assert offset == 8 and err.getvalue() == ""


def test_missing_log_is_not_an_error(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.StringIO()
    assert _copy_new(tmp_path / "nope" / "sim.log", 0, out, err) == 0
    assert out.getvalue() == b"" and err.getvalue() == ""


def test_a_cut_log_is_noted_and_followed_from_its_new_end(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_bytes(b"x" * 1000)
    out, err = io.BytesIO(), io.StringIO()
    offset = _copy_new(log, 0, out, err)
    log.write_bytes(b"head\n[cut]\ntail\n")  # what logcap leaves: shorter than before
    offset = _copy_new(log, offset, out, err)
    assert "cut" in err.getvalue()
    with log.open("ab") as fh:
        fh.write(b"after the cut\n")
    _copy_new(log, offset, out, err)
    assert out.getvalue() == b"x" * 1000 + b"after the cut\n"


def test_planted_symlink_and_fifo_are_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"password\n")
    link = tmp_path / "link.log"
    link.symlink_to(secret)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    out, err = io.BytesIO(), io.StringIO()
    assert _copy_new(link, 0, out, err) == 0
    assert _copy_new(fifo, 0, out, err) == 0  # and does not hang
    assert out.getvalue() == b""
    assert "symbolic link" in err.getvalue() and "not a regular file" in err.getvalue()
