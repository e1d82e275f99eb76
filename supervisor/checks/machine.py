"""What this machine offers local runs: CPUs, GPUs, memory and memory caps (pure decisions).

Each function takes what was found (CPU count, GPU ids, cgroup support) as arguments, so the
decision can be tested for any machine; `supervisor.checks.run_checks` finds the real values.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.checks.result import CheckResult, fail, names, ok, warn
from supervisor.executors.local.cgroups import HOW_TO_ENABLE, CapSupport
from supervisor.settings import LOCAL_EXECUTOR, Settings, Template

GIB = 1024**3


def local_templates(settings: Settings) -> list[Template]:
    """The templates whose runs run on this machine (their resources count here)."""
    return [t for t in settings.templates.values() if t.executor == LOCAL_EXECUTOR]


def cpus_check(settings: Settings, machine_cpus: int) -> CheckResult:
    """This machine's CPUs against the configured capacity and what templates ask for."""
    capacity = settings.cpu_capacity
    facts = {
        "machine": machine_cpus,
        "capacity": capacity,
        "max_concurrent_runs": settings.max_concurrent_runs,
    }
    detail = (
        f"{machine_cpus} here; local runs may hold {capacity}; "
        f"at most {settings.max_concurrent_runs} runs at once"
    )
    too_big = {t.name: t.cpus for t in local_templates(settings) if t.cpus > capacity}
    if too_big:
        asks = ", ".join(f"{n} asks {c}" for n, c in sorted(too_big.items()))
        return fail(
            "cpus",
            f"{detail}; {asks}: such a run never starts",
            f"lower the cpus of {names(too_big)}, or raise [resources] cpus",
            **facts,
        )
    if settings.resources.cpus is not None and settings.resources.cpus > machine_cpus:
        return warn(
            "cpus",
            f"{detail}: [resources] cpus is more than this machine has, so runs share CPUs",
            f"set [resources] cpus to at most {machine_cpus} unless sharing is meant",
            **facts,
        )
    return ok("cpus", detail, **facts)


def gpus_check(settings: Settings, gpu_ids: Sequence[str]) -> CheckResult:
    """The GPUs local runs can be given against the most a local template asks for."""
    auto = isinstance(settings.resources.gpus, str)
    source = "found by NVIDIA's driver" if auto else "listed in [resources] gpus"
    facts = {"gpu_ids": list(gpu_ids), "auto": auto}
    if gpu_ids:
        detail = f"{len(gpu_ids)} {source}: {', '.join(gpu_ids)}"
    elif auto:
        detail = "none (no NVIDIA driver answered)"
    else:
        detail = "none: [resources] gpus is empty"
    asking = {t.name: t.gpus for t in local_templates(settings) if t.gpus and t.gpus > len(gpu_ids)}
    if asking:
        asks = ", ".join(f"{n} asks {g}" for n, g in sorted(asking.items()))
        how = (
            "install NVIDIA's driver (nvidia-smi must list the GPUs)"
            if auto
            else "list more GPU ids in [resources] gpus"
        )
        return fail(
            "gpus",
            f"{detail}; {asks}: such a run never starts",
            f"{how}, lower the gpus of {names(asking)}, or send them to a cluster executor",
            **facts,
        )
    return ok("gpus", detail, **facts)


def memory_check(
    settings: Settings, support: CapSupport, memory_capacity: int, *, outside_systemd: bool
) -> CheckResult:
    """Whether memory caps can be enforced, against the local templates that set memory_max."""
    facts = {
        "enforced": support.enforced,
        "cgroup_version": str(support.version) if support.version else None,
        "cgroup": str(support.base) if support.base else None,
        "memory_capacity_bytes": memory_capacity,
    }
    capped = {t.name: t.memory_max for t in local_templates(settings) if t.memory_max}
    too_big = sorted(n for n, m in capped.items() if m is not None and m > memory_capacity)
    if too_big:
        return fail(
            "memory caps",
            f"{names(too_big)} set memory_max above the {_gib(memory_capacity)} local runs may "
            "reserve: such a run never starts",
            "lower their memory_max, or raise [resources] memory",
            **facts,
        )
    if support.enforced:
        return ok("memory caps", f"enforced: {support.reason}", **facts)
    reason = support.reason.removesuffix(f"; {HOW_TO_ENABLE}")
    fix = HOW_TO_ENABLE
    if outside_systemd:
        # The daemon's cgroup, not this shell's, decides; under systemd it may well differ.
        fix += " (checked from this shell's cgroup; a daemon run by systemd has its own)"
    if capped:
        return fail(
            "memory caps",
            f"{reason}; {names(capped)} set memory_max, so their runs would fail to start",
            fix,
            **facts,
        )
    return warn("memory caps", f"{reason}; no local template sets memory_max", fix, **facts)


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
