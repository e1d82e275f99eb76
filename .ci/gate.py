#!/usr/bin/env python3
"""CI's gate after pytest: no test may skip unless .ci/allowed-skips names it, and nothing the
suite started may be left. Reads the summary tests/tiers.py wrote (RUNSUP_TEST_SUMMARY) and
ends with one line: per tier, how many tests ran, passed and skipped. Exit 1 on a violation.

.ci/allowed-skips, one rule a line (`#` starts a comment):

    GLOB : reason                 tests matching GLOB (a node id pattern) may skip
    GLOB | GLOB ... : reason      alternatives (one per kind of machine): at least one of
                                  the tests they match must pass, the others may skip
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

ALLOW_LIST = Path(__file__).with_name("allowed-skips")
TIER_ORDER = (
    "unit", "integration", "system",
    "slurm", "slurm-accounting", "systemd", "cgroup", "mount", "root",
)  # fmt: skip


def read_rules(path: Path) -> list[tuple[list[str], str]]:
    """The allow-list's rules: (globs, reason); a rule without a reason is an error."""
    rules = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        globs, sep, reason = line.partition(" : ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{number}: a rule is 'GLOB [| GLOB ...] : reason'")
        rules.append(([g.strip() for g in globs.split("|")], reason.strip()))
    return rules


def violations(tests: list[dict], rules: list[tuple[list[str], str]]) -> list[str]:
    """What fails the gate: a test that did not report, a skip no rule allows, a group of
    alternatives none of which passed."""
    problems = []
    for test in tests:
        if test.get("outcome") is None:
            problems.append(f"no outcome (not run?): {test['nodeid']}")
        elif test["outcome"] == "skipped" and not any(
            fnmatch.fnmatchcase(test["nodeid"], g) for globs, _ in rules for g in globs
        ):
            problems.append(
                f"skipped ({', '.join(test['tiers'])}): {test['nodeid']}: {test.get('reason')}"
            )
    for globs, reason in rules:
        if len(globs) < 2:
            continue
        matched = [t for t in tests if any(fnmatch.fnmatchcase(t["nodeid"], g) for g in globs)]
        if not any(t.get("outcome") == "passed" for t in matched):
            problems.append(f"none of the alternatives {' | '.join(globs)} passed ({reason})")
    return problems


def tier_line(tests: list[dict]) -> str:
    """`tier: ran/passed/skipped` for every tier, in a fixed order."""
    counts: dict[str, Counter[str]] = {}
    for test in tests:
        for tier in test["tiers"]:
            counts.setdefault(tier, Counter())[test.get("outcome") or "none"] += 1
    names = [t for t in TIER_ORDER if t in counts] + sorted(set(counts) - set(TIER_ORDER))
    parts = []
    for name in names:
        c = counts[name]
        ran = c["passed"] + c["failed"]
        parts.append(f"{name} {ran} ran/{c['passed']} passed/{c['skipped']} skipped")
    return "tests by tier: " + "; ".join(parts)


def main(argv: list[str]) -> int:
    """Check the summary at argv[1]; 0 when CI may pass."""
    if len(argv) != 2:
        print("usage: gate.py SUMMARY.json", file=sys.stderr)
        return 2
    try:
        summary = json.loads(Path(argv[1]).read_text())
    except (OSError, ValueError) as exc:
        print(f"ci gate: no test summary ({exc}): did pytest run with tests/tiers.py?")
        return 1
    tests = summary["tests"]
    problems = violations(tests, read_rules(ALLOW_LIST))
    if not tests:
        problems.append("no test ran")
    problems += [f"left behind by the suite: {p}" for p in summary["leftovers"]]
    for problem in problems:
        print(f"ci gate: {problem}")
    print(tier_line(tests) + ("" if not problems else f" -- FAILED ({len(problems)} problems)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
