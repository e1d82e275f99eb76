"""The template key `progress_patterns` (SPEC 12): read, and checked with RE2 at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from sims.fusionsim import ITERATION_PATTERN, START_PATTERN

from supervisor.errors import ConfigError
from supervisor.settings import Settings, load_settings

START, ITERATION = START_PATTERN, ITERATION_PATTERN
FUSION = f"""
[templates.fusion]
command = ["/opt/fusion/bin/run_sim", "{{config_path}}"]
progress_patterns = ['{START}', '{ITERATION}']
"""


def load(tmp_path: Path, text: str) -> Settings:
    """Load settings from a config file with this text."""
    path = tmp_path / "runsup.toml"
    path.write_text(text)
    return load_settings(path, environ={"HOME": str(tmp_path)})


def test_patterns_are_read(tmp_path: Path) -> None:
    settings = load(tmp_path, FUSION)
    assert settings.templates["fusion"].progress_patterns == (START, ITERATION)
    assert settings.templates["erlang-demo"].progress_patterns == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (r"['(?P<iteration>\d+) \1']", "refused by RE2"),
        (r"['(?<=x)(?P<iteration>\d+)']", "refused by RE2"),
        (r"['(?P<percent>\d+)']", "unknown group name 'percent'"),
        (r"['step \d+']", "no named group"),
        ("'Iteration'", "expected a list of strings"),
        ("[1]", "expected a list of strings"),
    ],
)
def test_bad_patterns_name_file_key_and_reason(tmp_path: Path, value: str, expected: str) -> None:
    text = f'[templates.t]\ncommand = ["sim"]\nprogress_patterns = {value}\n'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(f"config file {tmp_path / 'runsup.toml'}: ")
    assert "templates.t.progress_patterns: " in message
    assert expected in message
