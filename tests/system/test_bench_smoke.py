"""The benchmark runner works end to end: bench/run.py --quick --only pickup prints its table.

No timing is asserted here (timings belong to bench/ and BENCHMARKS.md, not to tests); only
that the one command runs the installed daemon, measures, and prints figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"
NUMBER_MS = r"\d+(\.\d+)? ms"


def test_quick_pickup_prints_a_table_with_numbers() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "pickup"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"\d+ cores", out), out
    assert re.search(r"\d{4}-\d{2}-\d{2}", out), out  # the date
    header = next(line for line in out.splitlines() if line.startswith("scenario"))
    assert "value" in header and "target" in header
    for figure in ("insert -> RUNNING: median", "asked -> SIGTERM: median"):
        line = next((ln for ln in out.splitlines() if figure in ln), None)
        assert line is not None, f"no {figure!r} row in:\n{out}"
        assert re.search(NUMBER_MS, line), line
    # Every run the benchmark submitted ended CANCELLED, as it asked (no note says otherwise).
    assert "not CANCELLED" not in out


def test_unknown_scenario_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--only", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown scenario" in result.stderr
