"""The results table's pure parts (supervisor.results, supervisor.plot's series) and the
erlang-demo's one-load `erlang` key."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor import demo_sim
from supervisor.db import RunRecord
from supervisor.errors import ValidationError
from supervisor.plot import results_series
from supervisor.results import (
    ResultsProblem,
    build_table,
    cell_text,
    differing_keys,
    flatten,
    read_results_file,
    resolve_column,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def record(
    run_id: str, config: dict[str, Any], status: str = "COMPLETED", **extra: Any
) -> RunRecord:
    values: dict[str, Any] = {f.name: None for f in fields(RunRecord)}
    values.update(
        id=run_id,
        status=status,
        config_json=json.dumps(config),
        template="sim",
        started_at=T0,
        completed_at=T0 + timedelta(seconds=1.25),
    )
    values.update(extra)
    return RunRecord(**values)


def test_flatten_makes_dotted_keys_in_written_order_and_names_clashes() -> None:
    flat, clashes = flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "a.b": 9, "f": None})
    assert list(flat.items()) == [("a.b", 1), ("a.c.d", [1, 2]), ("e", {}), ("f", None)]
    assert clashes == ["a.b"]


def test_flatten_of_a_deeply_nested_object_does_not_recurse() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(5000):
        deep = {"n": deep}
    flat, _ = flatten(deep)
    assert list(flat.values()) == [1]


def test_differing_keys_counts_a_missing_key_as_a_value() -> None:
    configs = [{"a": 1, "b": [1], "c": 3}, {"a": 1, "b": [2]}, {"a": 1, "b": [1], "c": 3}]
    assert differing_keys(configs) == ["b", "c"]


def test_read_results_file_tells_every_unusable_file_apart(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    assert read_results_file(path) is None
    path.write_text('{"a": 1}')
    assert read_results_file(path) == {"a": 1}
    cases = {
        b"[1]": "holds a JSON list, not an object",
        b'"x"': "holds a JSON string, not an object",
        b"{": "is not JSON",
        b"\xff\xfe": "is not UTF-8 text",
        b"[" * 100_000: "nested too deeply",
    }
    for data, words in cases.items():
        path.write_bytes(data)
        with pytest.raises(ResultsProblem, match=words):
            read_results_file(path)
    path.write_bytes(b"{}" + b" " * 100)
    with pytest.raises(ResultsProblem, match="over the"):
        read_results_file(path, limit=50)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ResultsProblem, match="symbolic link"):
        read_results_file(path)
    path.unlink()
    os.mkfifo(path)  # a FIFO must not block the reader
    with pytest.raises(ResultsProblem, match="not a regular file"):
        read_results_file(path)


def test_build_table_columns_cells_and_notes(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"y": 2.5, "deep": {"z": True}}))
    runs = [
        record("aaaaaaaaaaaa", {"x": 1, "same": 0}, name="x=1"),
        record("bbbbbbbbbbbb", {"x": 2, "same": 0}),
        record("cccccccccccc", {"x": 3, "same": 0}, status="PENDING", started_at=None),
    ]
    paths = {"aaaaaaaaaaaa": good, "bbbbbbbbbbbb": tmp_path / "none.json", "cccccccccccc": None}
    table = build_table(runs, lambda r: paths[r.id])
    assert table.columns == [
        "id", "name", "status", "attempt", "duration_seconds", "config.x", "results.y",
        "results.deep.z",
    ]  # fmt: skip
    first, second, third = table.rows
    assert first == {
        "id": "aaaaaaaaaaaa", "name": "x=1", "status": "COMPLETED", "attempt": 1,
        "duration_seconds": 1.25, "config.x": 1, "results.y": 2.5, "results.deep.z": True,
    }  # fmt: skip
    assert second["results.y"] is None and third["attempt"] is None
    assert third["duration_seconds"] is None
    assert table.notes == ["run bbbbbbbbbbbb: it wrote no none.json"]
    # One run alone: no config key differs, so none is shown.
    assert build_table(runs[:1], lambda r: good).columns[5:] == ["results.y", "results.deep.z"]


def test_cells_and_column_names() -> None:
    assert cell_text(None) == "" and cell_text(True) == "true"
    assert cell_text({"a": [1, 2]}) == '{"a":[1,2]}'
    assert cell_text(0.1 + 0.2) == "0.30000000000000004"
    assert cell_text(0.1 + 0.2, width=10) == "0.3"
    assert cell_text("x" * 50, width=10) == "x" * 9 + "…"
    columns = ["id", "config.load", "results.load", "results.v"]
    assert resolve_column(columns, "v") == "results.v"
    assert resolve_column(columns, "config.load") == "config.load"
    with pytest.raises(ValueError, match=r"both config\.load and results\.load"):
        resolve_column(columns, "load")
    with pytest.raises(ValueError, match="no column 'w'"):
        resolve_column(columns, "w")


def test_plot_series_make_one_line_per_value_of_the_other_keys(tmp_path: Path) -> None:
    runs, paths = [], {}
    for i, (x, k) in enumerate([(3, "a"), (1, "a"), (2, "b"), (1, "b"), (5, "c")]):
        run_id = f"{i:012x}"
        paths[run_id] = tmp_path / f"{run_id}.json"
        y: object = x * 10 if k != "c" else "not a number"
        paths[run_id].write_text(json.dumps({"y": y}))
        runs.append(record(run_id, {"x": x, "k": k}))
    table = build_table(runs, lambda r: paths[r.id])
    x_col, y_col, series = results_series(table, "x", "y")
    assert (x_col, y_col) == ("config.x", "results.y")
    assert [(s.label, s.x, s.y) for s in series] == [
        ("k=a", [1.0, 3.0], [10.0, 30.0]),
        ("k=b", [1.0, 2.0], [10.0, 20.0]),
    ]
    with pytest.raises(ValidationError, match="no run shown has numbers in both"):
        results_series(table, "x", "k")


def test_the_demo_takes_one_load_as_erlang_and_writes_its_values_at_the_top() -> None:
    config = demo_sim.parse_config({"erlang": 6, "iterations": 2, "requests": 50})
    assert config.loads() == [6.0]
    with pytest.raises(demo_sim.DemoConfigError, match="give 'erlang'"):
        demo_sim.parse_config({"erlang": 6, "erlang_stop": 8})
    result = demo_sim.LoadResult(6.0, 10, 2, 50, 0.04, 0.03, 0.05, 0.01, 0.043)
    one = demo_sim.results_object(config, [result])
    assert one["mean_blocking"] == 0.04 and one["loads"] == [result._asdict()]
    two = demo_sim.results_object(config, [result, result])
    assert "mean_blocking" not in two and len(two["loads"]) == 2


def test_a_template_names_its_results_file_inside_the_run_directory(tmp_path: Path) -> None:
    from supervisor.errors import ConfigError
    from supervisor.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text("[templates.t]\ncommand = ['x']\nresults_file = 'out/r.json'\n")
    assert load_settings(config, environ={}).templates["t"].results_file == "out/r.json"
    assert load_settings(None, environ={}).templates["erlang-demo"].results_file == "results.json"
    for bad in ("/etc/passwd", "../r.json", "out/../../r.json"):
        config.write_text(f"[templates.t]\ncommand = ['x']\nresults_file = '{bad}'\n")
        with pytest.raises(ConfigError, match="results_file: expected a path inside the run"):
            load_settings(config, environ={})
