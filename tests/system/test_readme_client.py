"""README's "From Python" example, run as it is written against a real daemon: the code block
is taken from README.md itself, so the two can never differ."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import isolated_env
from daemon_harness import DaemonHarness
from png_checks import assert_png_drawn

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## From Python"
EXAMPLE_TIMEOUT_SECONDS = 120


def readme_example() -> str:
    """The first python code block after the section's heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    found = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None, f"no python block under {SECTION!r} in README.md"
    return found.group(1)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    yield h
    h.close()


def test_the_readme_example_runs_from_submit_to_plot(
    harness: DaemonHarness, tmp_path: Path
) -> None:
    harness.start()
    work = tmp_path / "work"
    work.mkdir()
    script = work / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    env = isolated_env(tmp_path / "home", {"RUNSUP_CONFIG": str(harness.config)})
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_SECONDS,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "{'COMPLETED': 6}" in out.stdout
    sweep_id = re.search(r"^sweep ([0-9a-f]{12})$", out.stdout, re.MULTILINE)
    assert sweep_id is not None, out.stdout
    runs = harness.store.list_runs(sweep_id=sweep_id[1])
    assert len(runs) == 6 and {r.status for r in runs} == {"COMPLETED"}
    # One printed row a run: its load, its seed and a blocking probability.
    rows = re.findall(r"^(4\.0|8\.0|12\.0) ([12]) (0\.\d+)$", out.stdout, re.MULTILINE)
    assert sorted((load, seed) for load, seed, _ in rows) == sorted(
        (load, seed) for load in ("4.0", "8.0", "12.0") for seed in ("1", "2")
    )
    assert str(work / "blocking.png") in out.stdout or "blocking.png" in out.stdout
    assert_png_drawn(work / "blocking.png")
