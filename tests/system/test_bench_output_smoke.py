"""bench/output_patterns.py --quick runs end to end and prints its figures (none asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "output_patterns.py"
BENCH_TIMEOUT_SECONDS = 120


def test_quick_run_prints_latency_and_cpu(tmp_path: Path) -> None:
    out_json = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"line -> record: median +\d+\.\d ms", result.stdout), result.stdout
    assert re.search(r"reader CPU +\d+\.\d % core", result.stdout), result.stdout
    figures = json.loads(out_json.read_text())
    # Every line written came out as a record (the figures are about all of them).
    assert figures["latency"]["received"] == figures["latency"]["lines"]
    assert figures["cpu"]["records"] == figures["cpu"]["expected_records"]
