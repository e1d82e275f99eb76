"""Log output: JSON lines with syslog priority prefixes on the journal's stream, plain JSON
elsewhere off a terminal, console lines on one."""

from __future__ import annotations

import json
import os
import pty
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from supervisor.logs import SYSLOG_PRIORITY, configure_logging, under_journald


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stderr.log").open("w+") as fh:
        yield fh


def journal_stream_of(fh: TextIO) -> str:
    """JOURNAL_STREAM as systemd sets it: device and inode of the stream, dev:inode."""
    st = os.fstat(fh.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def emit(fh: TextIO) -> list[str]:
    log = structlog.get_logger("test")
    log.info("daemon_ready", adopted=0)
    log.warning("run_killed", run_id="abc")
    log.error("reload_refused", error="bad")
    fh.flush()
    fh.seek(0)
    return fh.read().splitlines()


def test_under_journald_only_for_the_stream_named(log_file: TextIO, tmp_path: Path) -> None:
    assert under_journald(log_file, {"JOURNAL_STREAM": journal_stream_of(log_file)})
    with (tmp_path / "other").open("w") as other:
        assert not under_journald(other, {"JOURNAL_STREAM": journal_stream_of(log_file)})
    assert not under_journald(log_file, {})
    assert not under_journald(log_file, {"JOURNAL_STREAM": "garbage"})


def test_journal_lines_carry_syslog_priorities(
    log_file: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(log_file))
    configure_logging(stream=log_file)
    lines = emit(log_file)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["daemon_ready", "run_killed", "reload_refused"]
    assert events[2]["level"] == "error" and events[2]["error"] == "bad"
    assert SYSLOG_PRIORITY["error"] == 3  # what `journalctl -p err` selects


def test_plain_json_when_not_on_the_journal(
    log_file: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(stream=log_file)
    events = [json.loads(line) for line in emit(log_file)]
    assert [e["level"] for e in events] == ["info", "warning", "error"]


def test_console_lines_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        configure_logging(stream=tty)
        structlog.get_logger("test").info("daemon_ready", adopted=0)
        tty.flush()
        text = os.read(master, 4096).decode(errors="replace")
    os.close(master)
    assert "daemon_ready" in text
    assert not text.lstrip().startswith(("{", "<"))
