"""CI's gate (.ci/gate.py) on summaries written as tests/tiers.py writes them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

GATE = Path(__file__).resolve().parents[2] / ".ci" / "gate.py"


def _gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_gate", GATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test(nodeid: str, outcome: str, *tiers: str) -> dict[str, object]:
    return {"nodeid": nodeid, "tiers": list(tiers), "outcome": outcome, "reason": "why"}


def _run(tmp_path: Path, tests: list[dict[str, object]], leftovers: list[str]) -> int:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"exitstatus": 0, "tests": tests, "leftovers": leftovers}))
    code: int = _gate().main(["gate.py", str(summary)])
    return code


def test_a_skipped_real_part_test_fails_the_gate_and_the_line_counts_tiers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tests = [
        _test("tests/unit/test_a.py::test_x", "passed", "unit"),
        _test("tests/system/test_slurm_b.py::test_y", "skipped", "system", "slurm"),
    ]
    assert _run(tmp_path, tests, []) == 1
    out = capsys.readouterr().out
    assert "skipped (system, slurm): tests/system/test_slurm_b.py::test_y: why" in out
    assert out.splitlines()[-1].startswith(
        "tests by tier: unit 1 ran/1 passed/0 skipped; system 0 ran/0 passed/1 skipped; "
        "slurm 0 ran/0 passed/1 skipped -- FAILED"
    )


def test_an_allowed_skip_passes_and_a_leftover_process_fails(tmp_path: Path) -> None:
    allowed = "tests/unit/test_gpus.py::test_auto_falls_back_to_nvidia_smi"
    tests = [_test(allowed, "skipped", "unit")]
    assert _run(tmp_path, tests, []) == 0
    assert _run(tmp_path, tests, ["pid 12 (sleep 300) [x/y]"]) == 1
    assert _run(tmp_path, [], []) == 1, "no test at all fails"


def test_alternatives_need_one_that_passed(tmp_path: Path) -> None:
    gate = _gate()
    rules = [(["t.py::a*", "t.py::b*"], "one per kind of machine")]
    both_skipped = [_test("t.py::a1", "skipped", "unit"), _test("t.py::b1", "skipped", "unit")]
    one_passed = [_test("t.py::a1", "skipped", "unit"), _test("t.py::b1", "passed", "unit")]
    assert gate.violations(both_skipped, rules) == [
        "none of the alternatives t.py::a* | t.py::b* passed (one per kind of machine)"
    ]
    assert gate.violations(one_passed, rules) == []
