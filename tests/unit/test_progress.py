"""Tests of supervisor.progress.jsonl: parsing, folding and tailing progress.jsonl on real files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.progress.jsonl import (
    MAX_MESSAGE_CHARS,
    NO_MESSAGE,
    ProgressRecord,
    ProgressState,
    ProgressTail,
    parse_line,
)


def line(obj: object) -> bytes:
    """One JSON line with its newline."""
    return json.dumps(obj).encode() + b"\n"


def append(path: Path, data: bytes) -> None:
    """Append bytes the way the simulation does."""
    with path.open("ab") as fh:
        fh.write(data)


# --- parse_line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {"type": "start", "ts": "t", "config": {"total_erlangs": 4, "total_iterations": 10}},
            ProgressRecord("start", total_erlangs=4, total_iterations=10),
        ),
        (
            {"type": "erlang_start", "erlang": 300.0, "erlang_index": 0, "total_erlangs": 4},
            ProgressRecord("erlang_start", erlang=300.0, total_erlangs=4, erlang_index=0),
        ),
        (
            {
                "type": "iteration",
                "erlang": 300,
                "iteration": 3,
                "total_iterations": 10,
                "metrics": {"blocking_prob": 0.012},
            },
            ProgressRecord("iteration", erlang=300.0, iteration=3, total_iterations=10),
        ),
        (
            {"type": "erlang_complete", "erlang": 300.5, "metrics": {"x": 1}},
            ProgressRecord("erlang_complete", erlang=300.5),
        ),
        ({"type": "complete", "exit_code": 0}, ProgressRecord("complete", exit_code=0)),
        ({"type": "complete", "exit_code": -9}, ProgressRecord("complete", exit_code=-9)),
        (
            {"type": "error", "message": "boom", "traceback": "Traceback..."},
            ProgressRecord("error", message="boom"),
        ),
        ({"type": "error"}, ProgressRecord("error")),
        # untyped progress, and unknown types with progress fields, are type=None records
        ({"erlang": 1.5}, ProgressRecord(None, erlang=1.5)),
        (
            {"iteration": 0, "total_iterations": 0},
            ProgressRecord(None, iteration=0, total_iterations=0),
        ),
        ({"type": "heartbeat", "total_erlangs": 2}, ProgressRecord(None, total_erlangs=2)),
        ({"type": None, "iteration": 5}, ProgressRecord(None, iteration=5)),
        ({"erlang_index": 2}, ProgressRecord(None, erlang_index=2)),
        # an integer erlang is reported as a float
        ({"erlang": 2}, ProgressRecord(None, erlang=2.0)),
        # fields we only read on the type they belong to are ignored elsewhere
        ({"type": "iteration", "message": 5, "exit_code": "x"}, ProgressRecord("iteration")),
        # a top-level total wins over start.config
        (
            {"type": "start", "total_erlangs": 7, "config": {"total_erlangs": 4}},
            ProgressRecord("start", total_erlangs=7),
        ),
        ({"type": "start", "config": {}}, ProgressRecord("start")),
    ],
)
def test_parse_valid_records(obj: object, expected: ProgressRecord) -> None:
    """Every recognised type and untyped progress parse into the fields we use."""
    assert parse_line(line(obj)) == expected
    assert parse_line(line(obj).rstrip(b"\n")) == expected
    assert parse_line(b" \t" + line(obj).rstrip(b"\n") + b" \r\n") == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \r",
        b"{}",
        b'{"ts": "2024-01-01T00:00:00Z"}',
        b'{"type": "heartbeat", "ts": "x"}',
        b'{"type": null}',
    ],
)
def test_parse_ignored_lines_are_not_records(raw: bytes, tmp_path: Path) -> None:
    """Blank lines and objects carrying nothing we use give no record, and are not bad."""
    assert parse_line(raw) is None
    path = tmp_path / "progress.jsonl"
    path.write_bytes(raw + b"\n")
    tail = ProgressTail(path)
    assert tail.read() == []
    assert tail.bad_lines == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b'{"erlang": 1',
        b'{"erlang": 1} x',  # trailing data
        b'{"erlang": 1}{}',
        b'{"erlang": 1}\x0b',  # not JSON whitespace
        b"{",
        b"\xff\xfe{}",  # not UTF-8
        b'{"erlang": "\xc3"}',  # truncated UTF-8 sequence
        b"\xef\xbb\xbf{}",  # UTF-8 BOM
        b'{"erlang": true}',
        b'{"iteration": false}',
        b'{"total_erlangs": true}',
        b'{"iteration": 3.0}',
        b'{"total_iterations": 10.0}',
        b'{"total_erlangs": "4"}',
        b'{"erlang": "300"}',
        b'{"erlang": null}',
        b'{"iteration": -1}',
        b'{"total_erlangs": -4}',
        b'{"erlang_index": -1}',
        b'{"type": "iteration", "erlang_index": true}',
        b'{"erlang": -1.0}',
        b'{"erlang": NaN}',
        b'{"erlang": Infinity}',
        b'{"erlang": -Infinity}',
        b'{"erlang": 1e400}',
        b'{"iteration": 9223372036854775808}',
        b'{"erlang": 1' + b"0" * 400 + b"}",
        b'{"iteration": 1' + b"0" * 5000 + b"}",  # beyond Python's int digit limit
        b'{"type": 3, "erlang": 1}',
        b'{"type": "start", "config": [1]}',
        b'{"type": "start", "config": {"total_iterations": 2.5}}',
        b'{"type": "error", "message": 5}',
        b'{"type": "complete", "exit_code": true}',
        b'{"type": "complete", "exit_code": 0.0}',
        b"[" * 100_000 + b"]" * 100_000,  # nesting beyond the recursion limit
    ],
)
def test_parse_bad_lines(raw: bytes, tmp_path: Path) -> None:
    """Not JSON, not an object, NaN/Infinity, wrong types or ranges: no record, one bad line."""
    assert parse_line(raw) is None
    path = tmp_path / "progress.jsonl"
    path.write_bytes(raw + b"\n" + line({"erlang": 1.0}))
    tail = ProgressTail(path)
    assert tail.read() == [ProgressRecord(None, erlang=1.0)]
    assert tail.bad_lines == 1


def test_error_message_is_cut_and_made_encodable() -> None:
    """A lone surrogate (valid JSON escape) cannot reach a UTF-8 column; a huge message is cut."""
    rec = parse_line(b'{"type": "error", "message": "bad \\ud800 surrogate"}')
    assert rec is not None and rec.message is not None
    rec.message.encode("utf-8")
    long = parse_line(line({"type": "error", "message": "x" * (MAX_MESSAGE_CHARS * 2)}))
    assert long is not None and long.message == "x" * MAX_MESSAGE_CHARS


# --- ProgressState ----------------------------------------------------------------------


def test_state_folds_latest_values() -> None:
    """Each field keeps its latest value; a record without a field leaves it alone."""
    state = ProgressState()
    for rec in [
        ProgressRecord("start", total_erlangs=4, total_iterations=10),
        ProgressRecord("erlang_start", erlang=300.0, total_erlangs=4, erlang_index=1),
        ProgressRecord("iteration", erlang=300.0, iteration=3, total_iterations=10),
        ProgressRecord("erlang_complete", erlang=300.0),
        ProgressRecord(None, iteration=4),
    ]:
        state = state.fold(rec)
    assert state == ProgressState(300.0, 4, 4, 10, None, erlang_index=1)
    state = state.fold(ProgressRecord("error", message="boom"))
    assert state.last_error == "boom"
    assert state.fold(ProgressRecord("error")).last_error == NO_MESSAGE
    done = state.fold(ProgressRecord("complete", exit_code=0))
    assert done.completed_ok and done == dataclasses.replace(state, completed_ok=True)
    assert not done.fold(ProgressRecord(None, iteration=5)).completed_ok, "only the last record"
    assert not state.fold(ProgressRecord("complete", exit_code=2)).completed_ok


# --- ProgressTail -----------------------------------------------------------------------


def test_tail_reads_records_and_counts_bad_lines(tmp_path: Path) -> None:
    """Good lines land, bad ones are skipped and counted, blank and empty objects are neither."""
    path = tmp_path / "progress.jsonl"
    data = (
        line({"type": "start", "config": {"total_erlangs": 2, "total_iterations": 5}})
        + b"garbage\n"
        + b"\n"
        + b"{}\n"
        + b'{"iteration": 2.0}\n'
        + b"\xff\xfe\n"
        + line({"type": "iteration", "erlang": 1.0, "iteration": 1, "total_iterations": 5})
        + b'{"erlang": true}\r\n'
        + line({"erlang": 2.0})
    )
    path.write_bytes(data)
    tail = ProgressTail(path)
    records = tail.read()
    assert [r.type for r in records] == ["start", "iteration", None]
    assert tail.bad_lines == 4
    assert tail.offset == len(data)
    assert not tail.more
    assert tail.refused is None
    assert tail.read() == []  # nothing new


def test_tail_missing_file_is_empty_not_refused(tmp_path: Path) -> None:
    """A run that has not written yet is normal: no records, no refusal, no error."""
    tail = ProgressTail(tmp_path / "nope.jsonl")
    assert tail.read() == []
    assert tail.refused is None and tail.refusals == 0 and tail.offset == 0


def test_tail_holds_partial_last_line(tmp_path: Path) -> None:
    """A line without its newline is not consumed until complete; offset stays resumable."""
    path = tmp_path / "progress.jsonl"
    first = line({"erlang": 1.0})
    path.write_bytes(first + b'{"erlang": 2.')
    tail = ProgressTail(path)
    assert tail.read() == [ProgressRecord(None, erlang=1.0)]
    assert tail.offset == len(first)
    assert tail.read() == []
    append(path, b"5")
    assert tail.read() == []
    assert tail.offset == len(first)
    # a tail resumed from the saved offset sees the same line once it completes
    resumed = ProgressTail(path, tail.offset)
    append(path, b"}\n")
    assert tail.read() == [ProgressRecord(None, erlang=2.5)]
    assert resumed.read() == [ProgressRecord(None, erlang=2.5)]
    assert tail.offset == resumed.offset == path.stat().st_size
    assert tail.bad_lines == resumed.bad_lines == 0


def test_tail_skips_overlong_line_without_buffering_it(tmp_path: Path) -> None:
    """A line over max_line_bytes is dropped as it streams in and counted once complete."""
    path = tmp_path / "progress.jsonl"
    max_line, chunk, total = 1024, 256 * 1024, 16 * 1024 * 1024
    path.write_bytes(line({"erlang": 1.0}) + b'{"message": "')
    tail = ProgressTail(path, max_line_bytes=max_line, max_read_bytes=chunk)
    assert tail.read() == [ProgressRecord(None, erlang=1.0)]
    with path.open("ab") as fh:
        for _ in range(total // chunk):
            fh.write(b"x" * chunk)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        reads = 0
        while True:
            assert tail.read() == []
            reads += 1
            if not tail.more:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reads >= total // chunk
    assert peak < 4 * chunk  # a chunk or two, never the 16 MiB line
    assert tail.bad_lines == 0  # counted when its newline arrives
    append(path, b'"}\n' + line({"erlang": 2.0}))
    assert tail.read() == [ProgressRecord(None, erlang=2.0)]
    assert tail.bad_lines == 1
    assert tail.offset == path.stat().st_size


def test_tail_line_of_exactly_max_bytes_is_kept(tmp_path: Path) -> None:
    """The limit is inclusive: a line of exactly max_line_bytes (without newline) is parsed,
    also when it was held as a partial line of exactly that size first."""
    path = tmp_path / "progress.jsonl"
    body = json.dumps({"erlang": 1.0, "pad": "x" * 20}).encode()
    path.write_bytes(body)
    tail = ProgressTail(path, max_line_bytes=len(body))
    assert tail.read() == []
    append(path, b"\n" + body + b"x\n")
    assert tail.read() == [ProgressRecord(None, erlang=1.0)]
    assert tail.bad_lines == 1


def test_tail_bounded_read_sets_more(tmp_path: Path) -> None:
    """One read consumes at most max_read_bytes; `more` says there is more waiting."""
    path = tmp_path / "progress.jsonl"
    lines = [line({"iteration": i}) for i in range(100)]
    path.write_bytes(b"".join(lines))
    tail = ProgressTail(path, max_read_bytes=len(lines[0]) * 10)
    got: list[int | None] = []
    passes = 0
    while True:
        got += [r.iteration for r in tail.read()]
        passes += 1
        if not tail.more:
            break
    assert got == list(range(100))
    assert passes >= 10
    assert tail.offset == path.stat().st_size


def test_tail_restarts_after_truncation(tmp_path: Path) -> None:
    """A file that shrank below the offset is read again from 0."""
    path = tmp_path / "progress.jsonl"
    path.write_bytes(line({"iteration": 1}) + line({"iteration": 2}))
    tail = ProgressTail(path)
    assert len(tail.read()) == 2
    path.write_bytes(line({"iteration": 9}))  # truncates in place: same inode
    assert tail.read() == [ProgressRecord(None, iteration=9)]
    assert tail.restarts == 1
    assert tail.offset == path.stat().st_size


def test_tail_restarts_when_file_is_replaced(tmp_path: Path) -> None:
    """A file renamed over the old one (another inode) is read from 0 even if it is longer."""
    path = tmp_path / "progress.jsonl"
    path.write_bytes(line({"iteration": 1}))
    tail = ProgressTail(path)
    assert len(tail.read()) == 1
    new = tmp_path / "new.jsonl"
    new.write_bytes(line({"iteration": 10}) + line({"iteration": 11}))
    os.replace(new, path)
    assert [r.iteration for r in tail.read()] == [10, 11]
    assert tail.restarts == 1


def test_tail_refuses_symlink(tmp_path: Path) -> None:
    """A symlink is never followed, even to a valid progress file."""
    real = tmp_path / "real.jsonl"
    real.write_bytes(line({"erlang": 1.0}))
    link = tmp_path / "progress.jsonl"
    link.symlink_to(real)
    tail = ProgressTail(link)
    assert tail.read() == []
    assert tail.refused is not None and tail.refusals == 1
    link.unlink()
    link.write_bytes(line({"erlang": 2.0}))
    assert tail.read() == [ProgressRecord(None, erlang=2.0)]
    assert tail.refused is None


def test_tail_refuses_fifo_without_hanging(tmp_path: Path) -> None:
    """A FIFO with no writer would block a plain open; it is refused at once."""
    fifo = tmp_path / "progress.jsonl"
    os.mkfifo(fifo)
    tail = ProgressTail(fifo)
    assert tail.read() == []  # the pytest timeout catches a hang
    assert tail.refused is not None and "prw" in tail.refused
    assert tail.refusals == 1


def test_tail_refuses_directory_and_device(tmp_path: Path) -> None:
    """Anything that is not a regular file is refused, and counted."""
    (tmp_path / "dir.jsonl").mkdir()
    tail = ProgressTail(tmp_path / "dir.jsonl")
    assert tail.read() == [] and tail.refusals == 1
    dev = ProgressTail(Path("/dev/null"))
    assert dev.read() == [] and dev.refusals == 1 and dev.refused is not None


def test_tail_rejects_bad_arguments(tmp_path: Path) -> None:
    """Negative offsets and empty limits are programming errors."""
    with pytest.raises(ValueError):
        ProgressTail(tmp_path / "p", -1)
    with pytest.raises(ValueError):
        ProgressTail(tmp_path / "p", max_line_bytes=0)


# --- properties -------------------------------------------------------------------------

_record_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["start", "iteration", "error", "complete", "other", 3]),
        "erlang": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
        "iteration": st.one_of(st.integers(-2, 50), st.booleans(), st.just(1.0)),
        "total_iterations": st.integers(0, 50),
        "erlang_index": st.one_of(st.integers(-1, 5), st.none()),
        "message": st.text(max_size=10),
        "exit_code": st.integers(-300, 300),
        "config": st.fixed_dictionaries({}, optional={"total_erlangs": st.integers(-1, 9)}),
    },
)
_pieces = st.one_of(
    _record_objects.map(lambda o: json.dumps(o).encode() + b"\n"),
    st.binary(max_size=40),
    st.sampled_from([b"\n", b"\r\n", b"", b"{", b"\xff", b"NaN\n", b"x" * 70]),
)
_streams = st.lists(_pieces, max_size=25).map(b"".join)

MAX_LINE = 48  # small, so that over-long lines are common in generated streams


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_streams,
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    resume_at=st.sets(st.integers(0, 12)),
    read_bytes=st.integers(1, 64),
)
def test_chunked_reads_equal_one_read(
    data: bytes, cuts: list[int], resume_at: set[int], read_bytes: int
) -> None:
    """Any stream cut into any chunks (read after each, sometimes resumed from the saved
    offset by a fresh tail) yields the same records and bad-line count as one whole read."""
    with tempfile.TemporaryDirectory() as tmp:
        whole_path = Path(tmp) / "whole.jsonl"
        whole_path.write_bytes(data)
        whole = ProgressTail(whole_path, max_line_bytes=MAX_LINE)
        expected = whole.read_to_end()

        path = Path(tmp) / "chunked.jsonl"
        path.write_bytes(b"")
        tail = ProgressTail(path, max_line_bytes=MAX_LINE, max_read_bytes=read_bytes)
        records: list[ProgressRecord] = []
        bad = 0
        bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
        for step, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            append(path, data[lo:hi])
            if step in resume_at:  # a daemon restart: resume from the saved offset
                bad += tail.bad_lines
                tail = ProgressTail(
                    path, tail.offset, max_line_bytes=MAX_LINE, max_read_bytes=read_bytes
                )
            records += tail.read_to_end()
        bad += tail.bad_lines
        assert records == expected
        assert bad == whole.bad_lines
        assert tail.offset == whole.offset


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_parse_line_never_raises_on_bytes(raw: bytes) -> None:
    """Arbitrary bytes give a record or None, never an exception."""
    result = parse_line(raw)
    assert result is None or isinstance(result, ProgressRecord)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "erlang", "iteration", "erlang_index", "config", "message"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(_json_values)
def test_parse_line_never_raises_on_json(value: object) -> None:
    """Arbitrary JSON (NaN and Infinity included) gives a record or None; records are sane."""
    rec = parse_line(json.dumps(value).encode())
    if rec is not None:
        for count in (rec.total_erlangs, rec.iteration, rec.total_iterations, rec.erlang_index):
            assert count is None or (type(count) is int and count >= 0)
        assert rec.erlang is None or (type(rec.erlang) is float and rec.erlang >= 0)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_read_never_raises_on_bytes(raw: bytes, max_line: int) -> None:
    """Arbitrary file content is read without an exception and fully consumed up to its last
    newline."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "progress.jsonl"
        path.write_bytes(raw)
        tail = ProgressTail(path, max_line_bytes=max_line, max_read_bytes=32)
        tail.read_to_end()
        assert tail.offset == raw.rfind(b"\n") + 1


def test_erlang_start_resets_iteration_and_counts_loads_without_index() -> None:
    """SPEC-only simulations (no erlang_index) still give an honest overall position."""
    state = ProgressState()
    for line in (
        b'{"type":"erlang_start","erlang":1.0,"total_erlangs":3}',
        b'{"type":"iteration","erlang":1.0,"iteration":10,"total_iterations":10}',
        b'{"type":"erlang_start","erlang":2.0,"total_erlangs":3}',
    ):
        rec = parse_line(line)
        assert rec is not None
        state = state.fold(rec)
    assert state.erlang_index == 1
    assert state.current_iteration == 0
    explicit = parse_line(b'{"type":"erlang_start","erlang":5.0,"erlang_index":2}')
    assert explicit is not None
    assert state.fold(explicit).erlang_index == 2
