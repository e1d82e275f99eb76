"""Tests of supervisor.progress.patterns: compiling patterns, matching lines, tailing a log file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sims.fusionsim import ITERATION_PATTERN, START_PATTERN

from supervisor.errors import ConfigError
from supervisor.progress import logcap
from supervisor.progress.jsonl import MAX_MESSAGE_CHARS, NO_MESSAGE, ProgressRecord, ProgressState
from supervisor.progress.patterns import (
    LOGCAP_MARKER,
    MAX_LINE_BYTES,
    OutputTail,
    PatternError,
    check_patterns,
    compile_patterns,
)

# SPEC section 12's example patterns.
START, ITERATION = START_PATTERN, ITERATION_PATTERN
ERROR = r"^ERROR: (?P<error>.*)"
SPEC = compile_patterns([START, ITERATION, ERROR])


def append(path: Path, data: bytes) -> None:
    """Append bytes the way the simulation does."""
    with path.open("ab") as fh:
        fh.write(data)


def fold(records: list[ProgressRecord], state: ProgressState | None = None) -> ProgressState:
    """Fold records into a state as the daemon does."""
    state = state or ProgressState()
    for rec in records:
        state = state.fold(rec)
    return state


# --- compiling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(?P<iteration>[0-9]+) \1", "refused by RE2"),
        (r"(?P<iteration>[0-9]+)(?=x)", "refused by RE2"),
        (r"(?<!x)(?P<iteration>[0-9]+)", "refused by RE2"),
        (r"(?P<iteration>[0-9]++)", "refused by RE2"),
        (r"(?P<iteration>[0-9]+", "refused by RE2"),
        (r"(?P<iterations>[0-9]+)", "unknown group name 'iterations'"),
        (r"Iteration [0-9]+", "no named group"),
        ("", "no named group"),
        (r"(?P<erlang_index>\d) (?P<erlang_number>\d)", "both erlang_index and erlang_number"),
    ],
)
def test_unusable_patterns_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_patterns([ITERATION, pattern])
    assert repr(pattern) in str(caught.value)
    assert reason in str(caught.value)


def test_refused_pattern_prints_nothing_of_re2s_own(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PatternError):
        compile_patterns([r"(a)\1(?P<error>x)"])
    assert capfd.readouterr().err == ""


def test_check_patterns_names_where_and_type() -> None:
    where = "config file /x.toml: templates.t.progress_patterns"
    with pytest.raises(ConfigError, match=r"templates\.t\.progress_patterns: .*refused by RE2"):
        check_patterns([r"(?P<error>a)\1"], where)
    with pytest.raises(ConfigError, match="expected a list of strings"):
        check_patterns("Iteration", where)
    with pytest.raises(ConfigError, match="expected a list of strings"):
        check_patterns([1], where)
    assert check_patterns([ITERATION], where) == (ITERATION,)


# --- matching ----------------------------------------------------------------------------


def test_fusion_lines_give_load_and_iteration() -> None:
    start = SPEC.match(b"2026-01-01 INFO Starting simulation for 300.0 Erlang (load 2/3)")
    assert start.records == (
        ProgressRecord(type="erlang_start", erlang=300.0, erlang_index=1, total_erlangs=3),
    )
    it = SPEC.match(b"Iteration 2 out of 6 completed for Erlang: 300.0\r")
    assert it.records == (ProgressRecord(type=None, iteration=2, total_iterations=6),)
    state = fold([*it.records, *start.records])
    # A new load starts with no iteration done (as an erlang_start record of progress.jsonl).
    assert state == ProgressState(
        current_erlang=300.0,
        total_erlangs=3,
        current_iteration=0,
        total_iterations=6,
        erlang_index=1,
    )
    assert SPEC.match(b"nothing to see here").records == ()


def test_error_group_is_an_error_record() -> None:
    result = SPEC.match(b"ERROR: disk full")
    assert result.records == (ProgressRecord(type="error", message="disk full"),)
    assert fold(list(SPEC.match(b"ERROR: ").records)).last_error == NO_MESSAGE
    long = SPEC.match(b"ERROR: " + b"x" * (MAX_MESSAGE_CHARS + 10)).records[0]
    assert long.message == "x" * MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    "line",
    [
        b"Iteration 99999999999999999999999 out of 6 completed",  # > 2**63 - 1
        b"Starting simulation for 1.2.3 Erlang (load 1/3)",
        b"Starting simulation for 300.0 Erlang (load 0/3)",  # erlang_number counts from 1
        b"Starting simulation for 1" + b"0" * 400 + b" Erlang (load 1/3)",  # inf
    ],
)
def test_a_group_that_is_not_a_number_skips_the_line(line: bytes) -> None:
    result = SPEC.match(line)
    assert result.records == ()
    assert result.problem is not None


def test_float_group_refuses_what_float_would_take() -> None:
    patterns = compile_patterns([r"load=(?P<erlang>\S+)"])
    for text in (b"nan", b"inf", b"1_000", b"-1", b"\xd9\xa3"):
        assert patterns.match(b"load=" + text).problem is not None, text
    assert patterns.match(b"load=1e3").records == (ProgressRecord(type=None, erlang=1000.0),)


def test_optional_groups_that_do_not_take_part_are_absent() -> None:
    patterns = compile_patterns([r"step (?P<iteration>\d+)(?: of (?P<total_iterations>\d+))?"])
    assert patterns.match(b"step 3").records == (ProgressRecord(type=None, iteration=3),)
    nothing = compile_patterns([r"done(?P<error>!)?"])
    assert nothing.match(b"done").records == ()


def test_invalid_utf8_and_nul_bytes_are_matched_safely() -> None:
    line = b"\xff\xfe\x00 Iteration 4 out of 5 completed \x80\x00"
    assert SPEC.match(line).records == (ProgressRecord(type=None, iteration=4, total_iterations=5),)
    err = SPEC.match(b"ERROR: bad \xff byte")
    assert err.records[0].message == "bad \ufffd byte"


def test_compiled_patterns_are_cached() -> None:
    assert compile_patterns([START, ITERATION, ERROR]) is SPEC


# --- OutputTail ----------------------------------------------------------------------------


def test_tail_reads_complete_lines_only_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    tail = OutputTail(log, SPEC)
    assert tail.read() == []  # no file yet
    append(log, b"Iteration 1 out of 6 completed\nIteration 2 out of 6 comp")
    assert [r.iteration for r in tail.read()] == [1]
    append(log, b"leted\nnoise\n")
    assert [r.iteration for r in tail.read()] == [2]
    assert tail.offset == log.stat().st_size
    append(log, b"Iteration 3 out of 6 completed\n")
    resumed = OutputTail(log, SPEC, offset=tail.offset)
    assert [r.iteration for r in resumed.read()] == [3]
    assert resumed.resyncs == 0


def test_long_lines_are_skipped_without_being_held(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    tail = OutputTail(log, SPEC, max_read_bytes=4096)
    append(log, b"Iteration 1 out of 6 completed " + b"x" * (MAX_LINE_BYTES * 3))
    assert tail.read_to_end() == []
    assert len(tail._pending) <= MAX_LINE_BYTES  # never the whole line in memory
    append(log, b"\nIteration 2 out of 6 completed\n")
    assert [r.iteration for r in tail.read_to_end()] == [2]
    assert tail.long_lines == 1
    # Exactly at the limit is still a line.
    append(log, b"Iteration 3 out of 6 completed".ljust(MAX_LINE_BYTES, b" ") + b"\n")
    assert [r.iteration for r in tail.read_to_end()] == [3]
    assert tail.long_lines == 1


def test_reads_are_bounded_and_more_says_so(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    append(log, b"".join(b"Iteration %d out of 9 completed\n" % i for i in range(1000)))
    tail = OutputTail(log, SPEC, max_read_bytes=1000)
    first = tail.read()
    assert tail.more
    assert 0 < len(first) <= 1000 // len(b"Iteration 1 out of 9 completed\n")
    rest = tail.read_to_end()
    assert [r.iteration for r in first + rest] == list(range(1000))
    assert not tail.more


@pytest.mark.parametrize("chunk", [1, 7, 64, 65, 4096])
def test_chunk_size_never_changes_what_is_read(tmp_path: Path, chunk: int) -> None:
    log = tmp_path / "sim.log"
    data = numbered(0, 50) + b"x" * 300 + b"\n" + numbered(50, 50) + b"\xff\x00garbage\n"
    append(log, data)
    tail = OutputTail(log, SPEC, max_read_bytes=chunk, max_line_bytes=200)
    assert [r.iteration for r in tail.read_to_end()] == list(range(100))
    assert (tail.long_lines, tail.offset) == (1, len(data))


def test_bad_numbers_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    append(
        log, b"Iteration 1 out of 6 completed\nIteration 9" + b"9" * 30 + b" out of 6 completed\n"
    )
    tail = OutputTail(log, SPEC)
    assert [r.iteration for r in tail.read()] == [1]
    assert tail.bad_lines == 1


def numbered(start: int, n: int) -> bytes:
    """n numbered matching lines of 64 bytes each."""
    return b"".join(
        b"Iteration %06d out of 999999 completed".ljust(63, b".") % i + b"\n"
        for i in range(start, start + n)
    )


def test_logcap_cut_while_reader_is_in_the_kept_tail(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    cap = logcap.MIN_CAP_BYTES
    tail = OutputTail(log, SPEC)
    append(log, numbered(0, 2000))  # 128 KB > cap
    seen = [r.iteration for r in tail.read_to_end()]
    assert logcap.bound_log(log, cap).removed > 0
    append(log, numbered(2000, 10))
    with structlog.testing.capture_logs() as logs:
        seen += [r.iteration for r in tail.read_to_end()]
    assert seen == list(range(2010))  # nothing again, nothing lost
    assert tail.resyncs == 1
    assert [e["how"] for e in logs if e["event"] == "output_log_resynced"] == ["moved_down"]


def test_logcap_cut_while_reader_is_in_the_cut_part(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    cap = logcap.MIN_CAP_BYTES
    tail = OutputTail(log, SPEC, max_read_bytes=40 * 1024)
    append(log, numbered(0, 3000))
    seen = [r.iteration for r in tail.read()]  # the first 40 KB only: in the future cut part
    assert logcap.bound_log(log, cap).removed > 0
    assert LOGCAP_MARKER == logcap.MARKER
    with structlog.testing.capture_logs() as logs:
        seen += [r.iteration for r in tail.read_to_end()]
    assert [e["how"] for e in logs if e["event"] == "output_log_resynced"] == ["after_cut_marker"]
    assert seen == sorted(set(seen))  # increasing: no line twice
    assert seen[-1] == 2999  # and it goes on to the end
    assert tail.resyncs == 1


def test_truncated_by_someone_else_skips_to_the_end(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    tail = OutputTail(log, SPEC)
    append(log, numbered(0, 100))
    assert len(tail.read()) == 100
    os.truncate(log, 0)
    append(log, numbered(500, 3))
    assert tail.read() == []  # what is there now may repeat what was read: not taken
    append(log, numbered(600, 1))
    assert [r.iteration for r in tail.read()] == [600]


def test_replaced_file_is_read_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    tail = OutputTail(log, SPEC)
    append(log, numbered(0, 5))
    assert len(tail.read()) == 5
    other = tmp_path / "new.log"
    append(other, numbered(10, 2))
    os.replace(other, log)
    assert [r.iteration for r in tail.read()] == [10, 11]
    assert tail.restarts == 1


def test_resume_from_an_offset_that_is_no_line_start(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    append(log, numbered(0, 10))
    tail = OutputTail(log, SPEC, offset=100)  # inside line 1: the log changed since
    assert tail.read() == []  # where we are is unknown: go on from the end
    append(log, numbered(10, 1))
    assert [r.iteration for r in tail.read()] == [10]
    beyond = OutputTail(log, SPEC, offset=10**9)
    assert beyond.read() == []
    append(log, numbered(12, 1))
    assert [r.iteration for r in beyond.read()] == [12]


def test_symlink_is_refused_and_logged_once(tmp_path: Path) -> None:
    target = tmp_path / "real.log"
    append(target, numbered(0, 1))
    log = tmp_path / "sim.log"
    log.symlink_to(target)
    tail = OutputTail(log, SPEC, run_id="r1")
    with structlog.testing.capture_logs() as logs:
        assert tail.read() == []
        assert tail.read() == []
    assert tail.refused is not None
    refusals = [e for e in logs if e["event"] == "output_log_refused"]
    assert len(refusals) == 1
    assert refusals[0]["run_id"] == "r1"
    assert "not a regular file" in refusals[0]["reason"]


# --- the block prefilter gives what line-by-line matching gives -----------------------------

TRICKY = compile_patterns(
    [
        ITERATION,
        r"^ERROR: (?P<error>.*)$",
        r"(?P<erlang>[0-9.]+) Erlang$",
        r"(?i)load=(?P<total_erlangs>\d+)\s*",
    ]
)
PIECES = [
    b"Iteration 3 out of 9 completed",
    b"ERROR: it broke",
    b"x ERROR: not at the start",
    b"300.0 Erlang",
    b"300.0 Erlang\r",
    b"LOAD=4   ",
    b"load=5\tload=6",
    b"\xff\xfe 12.5 Erlang",
    b"plain chatter",
    b"",
    b"Iteration 1 out of",
]


@given(st.lists(st.sampled_from(PIECES), max_size=60), st.sampled_from([16, 5000, 1 << 20]))
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_prefilter_finds_what_line_by_line_finds(
    tmp_path: Path, pieces: list[bytes], chunk: int
) -> None:
    assert TRICKY.any_line is not None
    pieces = [b"chatter to make the block big enough for the block pass"] * 80 + pieces
    data = b"".join(p + b"\n" for p in pieces)
    want = [rec for p in pieces for rec in TRICKY.match(p).records]
    log = tmp_path / f"sim-{len(pieces)}-{chunk}-{hash(data)}.log"
    log.write_bytes(data)
    assert OutputTail(log, TRICKY, max_read_bytes=chunk).read_to_end() == want


def test_patterns_that_differ_inside_a_block_are_matched_line_by_line() -> None:
    for source in (r"\A(?P<iteration>\d+)", r"(?P<iteration>\d+)\z", r"(?-m)^(?P<iteration>\d)"):
        assert compile_patterns([source]).any_line is None
    lines = compile_patterns([r"\A(?P<iteration>\d+)"])
    assert lines.match(b"7 done").records == (ProgressRecord(type=None, iteration=7),)


def test_every_known_group_fills_a_field() -> None:
    from supervisor.progress.patterns import _FIELDS, KNOWN_GROUPS

    assert set(_FIELDS) == KNOWN_GROUPS


def test_tail_for_a_template_without_patterns_is_none(tmp_path: Path) -> None:
    from supervisor.progress.patterns import tail_for

    assert tail_for((), tmp_path / "sim.log") is None
    tail = tail_for((ITERATION,), tmp_path / "sim.log", 7)
    assert tail is not None
    assert (tail.offset, tail.patterns.sources) == (7, (ITERATION,))


def test_cut_with_repeated_lines_never_resumes_in_the_head(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    same = b"Iteration 7 out of 9 completed".ljust(63, b".") + b"\n"  # 64 bytes, like a block
    append(log, same * 2000 + numbered(1000, 1000))
    tail = OutputTail(log, SPEC, max_read_bytes=40 * 1024)
    assert {r.iteration for r in tail.read()} == {7}  # stopped inside the repeated lines
    assert logcap.bound_log(log, logcap.MIN_CAP_BYTES).removed > 0
    after = [r.iteration for r in tail.read_to_end()]
    # The kept head is the same lines as the anchor, block-aligned: resuming there would
    # give them again. After the marker come only the numbered lines, each once.
    assert after
    assert 7 not in after
    assert after == sorted(set(after))
    assert after[-1] == 1999
