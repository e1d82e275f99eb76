"""CPU cost of a memory cap per run: creating, entering and removing a run's cgroup.

Usage: python bench/cgroup_cost.py [--cycles N]   (root, on a machine where caps work)

Prints, in ms of CPU (user + system) per run:
- daemon side: `create` (mkdir + limit writes) + `memory_report` + `kill` (empty) + `remove`,
  measured in this process around N cycles, with a process moved in and out by `enter` so the
  cgroup really held a member;
- one move of a process into a cgroup and out, as the simulation's first write does;
- launch side: a spawned `sh -c 'printf 0 >procs; exec true'` (how the simulation enters its
  cgroup before exec) against the same sh without the write, from the children's CPU times
  (counted in clock ticks: with 100 ticks a second and 200 cycles, +-0.05 ms is noise).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import subprocess
import sys
import time

import structlog

from supervisor.executors.local import cgroups

DEFAULT_CYCLES = 200
CAP_BYTES = 256 * 1024 * 1024
ENTER_THEN_EXEC = 'printf 0 >"$1" || exit 124; exec true'
PLAIN_EXEC = "exec true"


def daemon_side_ms(support: cgroups.CapSupport, cycles: int) -> float:
    """CPU ms of this process per create + enter + report + kill + remove cycle."""
    assert support.base is not None
    parked = subprocess.Popen(["sleep", "1000"])
    home = cgroups.RunCgroup(support.version or cgroups.CgroupVersion.V1, support.base, "")
    try:
        start = time.process_time()
        for _ in range(cycles):
            cgroup = cgroups.create(support, secrets.token_hex(6), CAP_BYTES)
            cgroups.enter(cgroup, parked.pid)
            cgroups.enter(home, parked.pid)  # out again, as if the run had ended
            cgroups.memory_report(cgroup)
            cgroups.kill(cgroup)
            if not cgroups.remove(cgroup):
                raise SystemExit(f"could not remove {cgroup.path}")
        return (time.process_time() - start) * 1000 / cycles
    finally:
        parked.kill()
        parked.wait()


def move_cost_us(support: cgroups.CapSupport, cycles: int) -> float:
    """CPU microseconds of one move into a run's cgroup (the write the simulation makes)."""
    assert support.base is not None
    home = cgroups.RunCgroup(support.version or cgroups.CgroupVersion.V1, support.base, "")
    cgroup = cgroups.create(support, secrets.token_hex(6), CAP_BYTES)
    try:
        start = time.process_time()
        for _ in range(cycles):
            cgroups.enter(cgroup, 0)  # 0: this process
            cgroups.enter(home, 0)
        return (time.process_time() - start) * 1e6 / (2 * cycles)
    finally:
        cgroups.enter(home, 0)
        cgroups.remove(cgroup)


def children_cpu() -> float:
    """Seconds of CPU used by this process's reaped children so far."""
    times = os.times()
    return times.children_user + times.children_system


def launch_side_ms(support: cgroups.CapSupport, cycles: int) -> tuple[float, float]:
    """CPU ms per spawned sh that enters a cgroup before exec, and per plain one."""
    cgroup = cgroups.create(support, secrets.token_hex(6), CAP_BYTES)
    try:
        figures = []
        for script, args in ((ENTER_THEN_EXEC, [str(cgroup.procs_file)]), (PLAIN_EXEC, [])):
            before = children_cpu()
            for _ in range(cycles):
                subprocess.run(["/bin/sh", "-c", script, "sh", *args], check=True)
            figures.append((children_cpu() - before) * 1000 / cycles)
        return figures[0], figures[1]
    finally:
        cgroups.kill(cgroup)
        cgroups.remove(cgroup)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=DEFAULT_CYCLES)
    args = parser.parse_args()
    # The per-cycle debug lines would drown the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    support = cgroups.prepare(cgroups.detect())
    if not support.enforced:
        sys.exit(f"cgroup_cost: {support.reason}")
    print(f"cgroup {support.version} under {support.base}")
    daemon_ms = daemon_side_ms(support, args.cycles)
    move_us = move_cost_us(support, args.cycles * 10)
    entering_ms, plain_ms = launch_side_ms(support, args.cycles)
    print(f"daemon side  create+enter+report+kill+remove: {daemon_ms:.3f} ms CPU per run")
    print(f"one move into a cgroup (the simulation's own write): {move_us:.1f} us CPU")
    print(
        f"launch side  sh entering before exec: {entering_ms:.3f} ms CPU, without: "
        f"{plain_ms:.3f} ms CPU, difference {entering_ms - plain_ms:+.3f} ms"
    )


if __name__ == "__main__":
    main()
