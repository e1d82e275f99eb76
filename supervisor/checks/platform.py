"""The platform under the daemon: the kernel's process means, cgroups, SQLite and Python.

Pure decisions on what was found (`supervisor.checks.run_checks` finds the real values), so a
RHEL 8 or an Ubuntu 22.04 answer can be tested on any machine.
"""

from __future__ import annotations

from supervisor.checks.result import CheckResult, fail, ok, warn
from supervisor.executors.local.cgroups import CapSupport
from supervisor.executors.local.means import KernelMeans

# requires-python in pyproject.toml: the oldest Python runsup installs on.
PYTHON_MINIMUM = (3, 11)


def _version(parts: tuple[int, ...]) -> str:
    return ".".join(map(str, parts))


def kernel_check(means: KernelMeans, support: CapSupport, kernel: str) -> CheckResult:
    """What the kernel gives to watch and signal runs; every class keeps every promise."""
    facts = {
        "kernel": kernel,
        "pidfds": means.pidfds,
        "group_signals": means.group_signals,
        "cgroup_version": str(support.version) if support.version else None,
        "memory_controller": support.enforced,
    }
    cgroup = (
        f"cgroup {support.version} with the memory controller"
        if support.enforced
        else "no memory controller for the daemon (caps off; groups watched by /proc scans)"
    )
    detail = f"Linux {kernel}: {means.describe()}; {cgroup}"
    if not means.pidfds:
        return warn(
            "kernel",
            f"{detail}: after a daemon restart, the end of a run it adopted is seen within "
            f"{_poll_text()}",
            "nothing to do: every promise holds; Linux 5.3 or later watches runs by descriptor",
            **facts,
        )
    return ok("kernel", detail, **facts)


def _poll_text() -> str:
    from supervisor.executors.local.keeperwatch import KEEPER_POLL_MAX_SECONDS

    return f"{KEEPER_POLL_MAX_SECONDS:g} s"


def versions_check(
    sqlite: tuple[int, int, int],
    sqlite_minimum: tuple[int, int, int],
    python: tuple[int, int, int],
) -> CheckResult:
    """The SQLite library and the Python running runsup, against the minimum each needs."""
    facts = {
        "sqlite": _version(sqlite),
        "sqlite_minimum": _version(sqlite_minimum),
        "python": _version(python),
        "python_minimum": _version(PYTHON_MINIMUM),
    }
    detail = (
        f"SQLite {_version(sqlite)} (needs {_version(sqlite_minimum)}), "
        f"Python {_version(python)} (needs {_version(PYTHON_MINIMUM)})"
    )
    if tuple(sqlite) < sqlite_minimum:
        return fail(
            "versions",
            f"{detail}: this SQLite cannot hold the database; the daemon refuses to start",
            "install a newer libsqlite3, or run runsup with a Python built against one",
            **facts,
        )
    if tuple(python[:2]) < PYTHON_MINIMUM:
        return fail("versions", detail, f"run runsup with Python {_version(PYTHON_MINIMUM)}+",
                    **facts)  # fmt: skip
    return ok("versions", detail, **facts)
