"""The run directory: INI rendering (SPEC section 2) and ids that cannot escape runs_dir."""

from __future__ import annotations

import configparser
import json
import stat
from pathlib import Path

import pytest

from supervisor.errors import ValidationError
from supervisor.rundir import (
    config_path,
    create_run_dir,
    log_path,
    progress_path,
    render_config,
    run_dir_for,
)

FUSION_LIKE = {
    "sim_type": "erlang",
    "max_iters": 10,
    "erlang_start": 300.5,
    "save_snapshots": False,
    "thread_erlangs": None,
    "erlangs": [300, 350],
    "General_Settings_Case": "kept",
    "topology_settings": {"network": "NSFNet", "cores_per_link": 7, "Bw_Per_Slot": 12.5},
    "spectrum_settings": {"c_band": True, "allocation": "first_fit", "weights": {"a": 1}},
}


def parse_ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_objects_become_sections_and_scalars_general_settings() -> None:
    parser = parse_ini(render_config(FUSION_LIKE, "ini"))
    assert parser.sections() == ["general_settings", "topology_settings", "spectrum_settings"]
    assert dict(parser["general_settings"]) == {
        "sim_type": "erlang",  # strings as they are
        "max_iters": "10",  # others as JSON
        "erlang_start": "300.5",
        "save_snapshots": "false",
        "thread_erlangs": "null",
        "erlangs": "[300, 350]",
        "General_Settings_Case": "kept",  # key case kept
    }
    assert dict(parser["topology_settings"]) == {
        "network": "NSFNet",
        "cores_per_link": "7",
        "Bw_Per_Slot": "12.5",
    }
    assert dict(parser["spectrum_settings"]) == {
        "c_band": "true",
        "allocation": "first_fit",
        "weights": '{"a": 1}',
    }


def test_string_values_are_not_quoted_or_escaped() -> None:
    config = {"s": {"path": "/a b/c", "quoted": '"x"', "percent": "50%", "empty": ""}}
    parser = parse_ini(render_config(config, "ini"))
    assert dict(parser["s"]) == {"path": "/a b/c", "quoted": '"x"', "percent": "50%", "empty": ""}


def test_string_that_looks_like_json_stays_a_string() -> None:
    parser = parse_ini(render_config({"n": "10", "b": "true"}, "ini"))
    assert dict(parser["general_settings"]) == {"n": "10", "b": "true"}


def test_only_sections_means_no_general_settings() -> None:
    parser = parse_ini(render_config({"a": {"x": 1}}, "ini"))
    assert parser.sections() == ["a"]


def test_explicit_general_settings_object_merges_with_scalars() -> None:
    config = {"general_settings": {"from_object": 1}, "top": "v"}
    parser = parse_ini(render_config(config, "ini"))
    assert parser.sections() == ["general_settings"]
    assert dict(parser["general_settings"]) == {"from_object": "1", "top": "v"}


def test_empty_config_renders_empty_ini() -> None:
    assert parse_ini(render_config({}, "ini")).sections() == []


def test_json_rendering_round_trips() -> None:
    text = render_config(FUSION_LIKE, "json")
    assert json.loads(text) == FUSION_LIKE
    assert text.endswith("\n")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValidationError, match="yaml"):
        render_config({}, "yaml")


@pytest.mark.parametrize(
    "run_id",
    ["../../etc", "ABCDEF123456", "abcdef12345", "abcdef1234567", "abcdef12345g", "",
     "/abs/olute00", "abcdef/12345", "..", "abcdef12345\n"],
)  # fmt: skip
def test_run_dir_for_refuses_bad_ids(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ValidationError):
        run_dir_for(tmp_path, run_id)


def test_run_dir_for_accepts_lowercase_hex(tmp_path: Path) -> None:
    run_dir = run_dir_for(tmp_path, "0123456789ab")
    assert run_dir == tmp_path / "0123456789ab"
    assert progress_path(run_dir) == run_dir / "progress.jsonl"
    assert log_path(run_dir) == run_dir / "logs" / "sim.log"
    assert config_path(run_dir, "ini") == run_dir / "config.ini"


@pytest.mark.parametrize("config_format", ["json", "ini"])
def test_create_run_dir_writes_config_and_logs_folder(tmp_path: Path, config_format: str) -> None:
    run_dir = run_dir_for(tmp_path, "0123456789ab")
    written = create_run_dir(run_dir, FUSION_LIKE, config_format)
    assert written == run_dir / f"config.{config_format}"
    assert written.read_text(encoding="utf-8") == render_config(FUSION_LIKE, config_format)
    assert (run_dir / "logs").is_dir()
    assert not list(run_dir.glob("*.tmp"))
    assert stat.S_IMODE(written.stat().st_mode) & 0o007 == 0  # not world-readable

    # Reused after a crash: the config is rewritten, nothing fails.
    again = create_run_dir(run_dir, {"seed": 2}, config_format)
    assert again == written
    assert "seed" in written.read_text(encoding="utf-8")


def test_default_section_is_written_not_crashed_on() -> None:
    parser = parse_ini(render_config({"DEFAULT": {"seed": 1}, "a": {"x": 2}}, "ini"))
    assert parser.defaults() == {"seed": "1"}
    assert parser.get("a", "x") == "2"


def test_multiline_string_value_reads_back() -> None:
    parser = parse_ini(render_config({"s": {"notes": "one\ntwo"}}, "ini"))
    assert parser.get("s", "notes") == "one\ntwo"


@pytest.mark.parametrize(
    "config",
    [{"a=b": 1}, {"a:b": 1}, {" padded ": 1}, {"#comment": 1}, {";c": 1}, {"[x": 1}, {"": 1},
     {"s": {"k=v": 1}}, {"two\nlines": {}}, {"": {}}],
)  # fmt: skip
def test_names_ini_cannot_carry_are_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="cannot be written to an INI file"):
        render_config(config, "ini")
