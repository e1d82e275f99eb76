"""The progress reader against arbitrary bytes (issue 6): any byte stream, cut into any chunks
and read after each, yields the same records and bad-line count as reading it whole, and
reading never raises. Complements the structured streams of test_progress.py with streams
hypothesis draws byte by byte, at the real line limit and at a tiny one."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.progress.jsonl import MAX_LINE_BYTES, ProgressRecord, ProgressTail

# Bytes that matter to the reader, so that short random streams hit them often.
_ALPHABET = st.sampled_from(
    [b"\n", b"\r", b"{", b"}", b'"', b":", b",", b"1", b"x", b"\xff", b"\xc3", b" ", b"\0"]
)
_LINES = st.sampled_from(
    [
        b'{"iteration": 3}\n',
        b'{"type": "start", "config": {"total_iterations": 9}}\n',
        b'{"erlang": 1e400}\n',
        b'{"type": "error", "message": "\\ud800"}\n',
    ]
)
_streams = st.lists(st.one_of(st.binary(max_size=30), _ALPHABET, _LINES), max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_streams,
    cuts=st.lists(st.integers(0, 1500), max_size=15),
    max_line=st.sampled_from([MAX_LINE_BYTES, 16]),
    read_bytes=st.integers(1, 50),
)
def test_any_bytes_in_any_chunks_read_as_whole(
    data: bytes, cuts: list[int], max_line: int, read_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        whole_path = Path(tmp) / "whole.jsonl"
        whole_path.write_bytes(data)
        whole = ProgressTail(whole_path, max_line_bytes=max_line)
        expected = whole.read_to_end()

        path = Path(tmp) / "progress.jsonl"
        path.write_bytes(b"")
        tail = ProgressTail(path, max_line_bytes=max_line, max_read_bytes=read_bytes)
        records: list[ProgressRecord] = []
        bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
        for lo, hi in itertools.pairwise(bounds):
            with path.open("ab") as fh:
                fh.write(data[lo:hi])
            records += tail.read_to_end()
        assert records == expected
        assert tail.bad_lines == whole.bad_lines
        assert tail.offset == whole.offset == data.rfind(b"\n") + 1
