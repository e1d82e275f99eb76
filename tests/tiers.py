"""pytest plugin: each test's tiers, and a JSON summary of what ran, passed and skipped.

A test has one base tier from its folder (unit, integration, system) and any number of
real-part tiers: the real things it needs that a machine may lack (a Slurm cluster, one with
accounting, a booted systemd, cgroups, mounts, root). The real-part tiers come from the table
below (by module and by fixture) and from markers a test sets itself
(`@pytest.mark.tier("mount")`).

With RUNSUP_TEST_SUMMARY set to a path, the session writes there one object per test (node id,
tiers, outcome, skip reason) and the processes the suite left behind (leaks.py); .ci/gate.py
reads it and fails CI on a skip not allowed by .ci/allowed-skips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import leaks
import pytest

SUMMARY_VARIABLE = "RUNSUP_TEST_SUMMARY"
BASE_TIERS = ("unit", "integration", "system")
REAL_TIERS = ("slurm", "slurm-accounting", "systemd", "cgroup", "mount", "root")

# Module file name -> the real-part tiers of every test in it.
MODULE_TIERS: dict[str, tuple[str, ...]] = {
    "test_slurm_cluster.py": ("slurm",),
    "test_slurm_commands.py": ("slurm",),
    "test_slurm_standin.py": ("slurm",),
    "test_slurm_executor.py": ("slurm",),
    "test_systemd_harness.py": ("systemd",),
    "test_systemd_service.py": ("systemd",),
    "test_systemd_metrics.py": ("systemd",),
    "test_systemd_caps.py": ("systemd", "cgroup"),
    "test_unit_file.py": ("systemd",),
    "test_cgroups.py": ("cgroup",),
    "test_cgroup_handover.py": ("cgroup", "root"),
    "test_resources.py": ("cgroup",),
}
# Fixture name -> the real-part tiers of a test that takes it.
FIXTURE_TIERS: dict[str, tuple[str, ...]] = {
    "slurm_cluster": ("slurm",),
    "slurm_cluster_accounting": ("slurm", "slurm-accounting"),
    "slurm_commands": ("slurm",),
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and start collecting outcomes."""
    config.addinivalue_line(
        "markers", "tier(*names): real-part tiers of the test (slurm, systemd, cgroup, ...)"
    )


# Node id -> {"outcome": passed/failed/skipped, "reason": why it skipped}.
_outcomes: dict[str, dict[str, Any]] = {}


def tiers_of(item: pytest.Item) -> list[str]:
    """The test's base tier first, then its real-part tiers."""
    parts = Path(str(item.path)).parts
    base = next((tier for tier in BASE_TIERS if tier in parts), "other")
    real: set[str] = set(MODULE_TIERS.get(item.path.name, ()))
    for name in getattr(item, "fixturenames", ()):
        real.update(FIXTURE_TIERS.get(name, ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("any_slurm_cluster") is not None:
        real.add("slurm")
        if callspec.params["any_slurm_cluster"] == "accounting":
            real.add("slurm-accounting")
    for mark in item.iter_markers("tier"):
        real.update(mark.args)
    unknown = real - set(REAL_TIERS)
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown tier(s) {sorted(unknown)}")
    return [base, *sorted(real)]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep each test's outcome: failed if any phase failed, skipped, else passed once run."""
    entry = _outcomes.setdefault(report.nodeid, {"outcome": None, "reason": None})
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        entry["reason"] = getattr(report, "wasxfail", None) or reason
    elif report.when == "call" and report.passed and entry["outcome"] is None:
        entry["outcome"] = "passed"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the summary where RUNSUP_TEST_SUMMARY says (after leaks.py's last check)."""
    path = os.environ.get(SUMMARY_VARIABLE)
    if not path:
        return
    tests = [
        {"nodeid": item.nodeid, "tiers": tiers_of(item), **_outcomes.get(item.nodeid, {})}
        for item in session.items
    ]
    summary = {
        "exitstatus": int(session.exitstatus),
        "tests": tests,
        "leftovers": list(leaks.session_leftovers),
    }
    Path(path).write_text(json.dumps(summary, indent=1) + "\n")
