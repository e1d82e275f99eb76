"""The watch view's pure parts: what a run looks like, plain lines, the live layouts; the
demo's results table."""

from __future__ import annotations

import io
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from supervisor.cli.demo import LoadRow, demo_configs, results_table
from supervisor.cli.watchview import _LiveDisplay, _PlainDisplay, run_view
from supervisor.db import RunRecord
from supervisor.demo_sim import parse_config

NOW = datetime(2025, 1, 2, 12, 0, 0, tzinfo=UTC)


def record(**values: Any) -> RunRecord:
    """A RunRecord with every column None but the required ones and `values`."""
    base: dict[str, Any] = {f.name: None for f in fields(RunRecord)}
    base.update(
        id="0123456789ab",
        name="sweep",
        status="RUNNING",
        config_json="{}",
        template="erlang-demo",
        created_at=NOW - timedelta(seconds=30),
    )
    base.update(values)
    return RunRecord(**base)


RUNNING = record(
    started_at=NOW - timedelta(seconds=20),
    current_erlang=8.0,
    erlang_index=1,
    total_erlangs=2,
    current_iteration=5,
    total_iterations=10,
)


def test_running_view_has_load_iteration_rate_and_eta() -> None:
    v = run_view(RUNNING, NOW)
    assert v.percent == "75%"  # (1 + 5/10) / 2
    assert v.load == "8 (2/2)"
    assert v.iteration == "5/10"
    assert v.rate == "0.8 it/s"  # 15 iterations in 20 s
    assert v.eta == "6s"  # 20 s * 0.25 / 0.75
    assert v.note == ""


def test_pending_starting_and_final_views() -> None:
    assert run_view(record(status="PENDING"), NOW).note == "queued"
    starting = run_view(record(started_at=NOW), NOW)
    assert (starting.percent, starting.note) == ("-", "starting")
    done = run_view(
        record(status="COMPLETED", started_at=NOW - timedelta(seconds=65), completed_at=NOW), NOW
    )
    assert (done.percent, done.note, done.rate, done.eta) == ("100%", "in 1m05s", "", "")
    failed = run_view(
        record(
            status="FAILED",
            started_at=NOW - timedelta(seconds=3),
            completed_at=NOW,
            exit_code=3,
            error_message="exited with code 3: matrix is singular",
        ),
        NOW,
    )
    assert failed.note == "after 3s: exited with code 3: matrix is singular"


def test_plain_display_prints_a_line_per_change_only() -> None:
    out = io.StringIO()
    display = _PlainDisplay(out, "header")
    view = run_view(RUNNING, NOW)
    display.update([view], NOW)
    display.update([run_view(RUNNING, NOW + timedelta(seconds=5))], NOW)  # only rate/ETA moved
    lines = out.getvalue().splitlines()
    assert lines[0] == "header"
    assert len(lines) == 2
    assert lines[1] == (
        "12:00:00  0123456789ab  sweep  RUNNING  75%  load 8 (2/2)  iteration 5/10"
        "  0.8 it/s  ETA 6s"
    )


@pytest.mark.parametrize("width", [60, 80, 100, 140])
def test_live_layouts_fit_the_terminal(width: int) -> None:
    out = io.StringIO()
    display = _LiveDisplay(out, "header", 0.5)
    display.console.width = width
    views = [
        run_view(RUNNING, NOW),
        run_view(record(id="ba9876543210", status="PENDING", name="a rather long name"), NOW),
    ]
    display.console.begin_capture()
    display.console.print(display._render(views, NOW))
    text = display.console.end_capture()
    display.close()
    for line in text.splitlines():
        assert len(line) <= width
    assert "0123456789ab" in text and "ba9876543210" in text
    assert "RUNNING" in text and "PENDING" in text
    # The RUNNING row's figures survive every width (wrapped or in columns, not cut): its
    # ETA (6s), share done and rate.
    assert "6s" in text and "75%" in text and "0.8" in text


def test_demo_configs_are_valid_and_results_table_counts_agreement() -> None:
    for _, config in demo_configs():
        parse_config(config)  # raises on a bad key or value
    rows = [
        LoadRow(load=4.0, mean=0.0055, ci_low=0.0050, ci_high=0.0061, exact=0.00531),
        LoadRow(load=10.0, mean=0.2300, ci_low=0.2250, ci_high=0.2350, exact=0.21458),
    ]
    text = results_table(rows)
    assert "yes" in text.splitlines()[1] and "NO" in text.splitlines()[2]
    assert "for 1 of 2 loads" in text
