"""`runsup check`: what this machine offers and what the configuration needs of it.

Each check is a function of the settings and what was found (pure, in the modules of this
package); `run_checks` finds the real values on this machine and calls them all. Nothing here
creates, upgrades or locks anything.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable

from supervisor.checks.result import CheckResult, Status, exit_code, fail, names, ok
from supervisor.settings import LOCAL_EXECUTOR, Settings

__all__ = ["CheckResult", "Status", "exit_code", "run_checks"]

# systemd sets this for every service it runs: then this process's cgroup is the daemon's kind.
SYSTEMD_INVOCATION_VARIABLE = "INVOCATION_ID"


def configuration_check(settings: Settings) -> CheckResult:
    """The configuration read (a broken one never gets here) and where its templates run."""
    by_executor: dict[str, list[str]] = {}
    for template in settings.templates.values():
        by_executor.setdefault(template.executor, []).append(template.name)
    where = "; ".join(f"{e}: {names(t)}" for e, t in sorted(by_executor.items()))
    source = str(settings.config_file) if settings.config_file else "built-in defaults"
    return ok(
        "configuration",
        f"valid ({source}); {len(settings.templates)} template(s), {where}",
        templates={e: sorted(t) for e, t in by_executor.items()},
        executors=[LOCAL_EXECUTOR, *sorted(settings.executors)],
    )


def run_checks(settings: Settings) -> list[CheckResult]:
    """Every check, in the order they are shown."""
    steps: list[Callable[[Settings], list[CheckResult]]] = [
        _machine, _storage, _daemon, _executors, _programs,
    ]  # fmt: skip
    results = [configuration_check(settings)]
    for step in steps:
        try:
            results.extend(step(settings))
        except Exception as exc:  # a check must report, not crash the others
            results.append(fail(step.__name__.strip("_"), f"the check itself failed: {exc!r}",
                                "report this as a bug"))  # fmt: skip
    return results


def _machine(settings: Settings) -> list[CheckResult]:
    from supervisor.checks.machine import cpus_check, gpus_check, memory_check
    from supervisor.checks.platform import kernel_check, versions_check
    from supervisor.db.engine import SQLITE_MINIMUM
    from supervisor.executors.local import cgroups
    from supervisor.executors.local.means import probe as detect_means
    from supervisor.queue.gpus import resolve_gpus

    support = cgroups.detect()
    return [
        kernel_check(detect_means(), support, os.uname().release),
        versions_check(sqlite3.sqlite_version_info, SQLITE_MINIMUM, sys.version_info[:3]),
        cpus_check(settings, len(os.sched_getaffinity(0))),
        gpus_check(settings, resolve_gpus(settings.resources.gpus)),
        memory_check(
            settings,
            support,
            settings.resources.memory_capacity(),
            outside_systemd=SYSTEMD_INVOCATION_VARIABLE not in os.environ,
        ),
    ]


def _storage(settings: Settings) -> list[CheckResult]:
    from supervisor.checks.storage import database_check, dir_state, read_mounts, runs_dir_check
    from supervisor.db.migrate import HEAD_REVISION
    from supervisor.db.probe import probe_database

    mounts = read_mounts()
    results = [runs_dir_check(settings, dir_state(settings.runs_dir, mounts))]
    path = settings.database_path
    if path is not None:  # the settings accept SQLite files only
        state = dir_state(path.parent, mounts)
        results.append(database_check(settings, probe_database(path), state, HEAD_REVISION))
    return results


def _daemon(settings: Settings) -> list[CheckResult]:
    """Whether a daemon serves this database now (its heartbeat): a ready configuration with
    nobody serving it leaves every submitted run PENDING."""
    from supervisor.checks.result import ok, warn
    from supervisor.cliopen import daemon_absent

    absent = daemon_absent(settings)
    if absent is None:
        return [ok("daemon", "a daemon serves this database (its heartbeat is fresh)")]
    words, _, fix = absent.partition("; ")
    return [warn("daemon", words, fix or None)]


def _executors(settings: Settings) -> list[CheckResult]:
    from supervisor.checks.slurm import executor_checks, probe_slurm
    from supervisor.checks.storage import dir_state, read_mounts

    mounts = read_mounts() if settings.executors else []
    results: list[CheckResult] = []
    for name, executor in sorted(settings.executors.items()):
        used_by = sorted(t.name for t in settings.templates.values() if t.executor == name)
        probe = probe_slurm(executor, dir_state(executor.runs_dir, mounts))
        results.extend(executor_checks(executor, probe, used_by))
    return results


def _programs(settings: Settings) -> list[CheckResult]:
    from supervisor.checks.listen import metrics_check, probe_listen
    from supervisor.checks.programs import commands_check, hooks_check

    listen = settings.metrics.listen
    probe = probe_listen(listen) if listen is not None else None
    return [commands_check(settings), hooks_check(settings), metrics_check(settings, probe)]
