"""What one local run's keeper costs: CPU per run and private memory while the run goes.

Usage: .venv/bin/python bench/keeper_cost.py [--samples N]

Prints the CPU of keeper + setsid + inner sh per run (ms, user + system, as the difference of
the children's CPU times between a launch through LocalExecutor and a plain posix_spawn of the
same /bin/true, medians over N samples) and the keeper's USS (KiB) while it waits for a
`sleep`. Targets (BENCHMARKS.md): under 5 ms CPU (a Python keeper costs about 60 ms) and
under 2 MiB USS. Moved here from tests/integration/test_processes.py, where the test now
checks why it is cheap (a shell blocked in wait), not how cheap.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import select
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
import structlog

from supervisor.executors.base import LaunchSpec
from supervisor.executors.local.executor import LocalExecutor

DEFAULT_SAMPLES = 30
PATH = "/usr/bin:/bin"
WAIT_SECONDS = 10.0
CPU_TARGET_MS = 5.0
USS_TARGET_KIB = 2048


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _spec(base: Path, n: int, argv: list[str]) -> LaunchSpec:
    run_dir = base / f"run{n}"
    run_dir.mkdir()
    return LaunchSpec(
        run_id=f"run{n}",
        argv=argv,
        cwd=run_dir,
        env={"PATH": PATH},
        log_path=run_dir / "logs" / "sim.log",
        record_dir=run_dir / ".runsup",
    )


def measure(samples: int) -> tuple[float, float, float, int]:
    """(overhead ms, median ms through the keeper, median ms direct, keeper USS bytes)."""
    executor = LocalExecutor()
    through_keeper, direct = [], []
    with tempfile.TemporaryDirectory(prefix="keeper-cost-") as tmp:
        base = Path(tmp)
        for n in range(samples):
            before = _children_cpu()
            handle = executor.launch(_spec(base, n, ["/bin/true"]))
            poller = select.poll()
            poller.register(handle.fileno(), select.POLLIN)
            if not poller.poll(WAIT_SECONDS * 1000) or handle.exit_status() is None:
                raise SystemExit("a /bin/true run did not end")
            handle.close()
            through_keeper.append(_children_cpu() - before)
            before = _children_cpu()
            pid = os.posix_spawn("/bin/true", ["/bin/true"], {"PATH": PATH})
            os.waitpid(pid, 0)
            direct.append(_children_cpu() - before)
        handle = executor.launch(_spec(base, samples, ["sleep", "60"]))
        try:
            uss = psutil.Process(handle.record.keeper_pid).memory_full_info().uss
        finally:
            handle.signal_group(signal.SIGKILL)
            poller = select.poll()
            poller.register(handle.fileno(), select.POLLIN)
            poller.poll(WAIT_SECONDS * 1000)
            handle.exit_status()
            handle.close()
    keeper_ms = statistics.median(through_keeper) * 1e3
    direct_ms = statistics.median(direct) * 1e3
    return keeper_ms - direct_ms, keeper_ms, direct_ms, int(uss)


def main() -> int:
    """Print the figures; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    overhead, keeper_ms, direct_ms, uss = measure(args.samples)
    print(
        f"keeper cost: {overhead:.2f} ms CPU per run (median {keeper_ms:.2f} ms with the keeper,"
        f" {direct_ms:.2f} ms direct; target < {CPU_TARGET_MS:g} ms);"
        f" keeper USS {uss / 1024:.0f} KiB (target < {USS_TARGET_KIB} KiB)"
    )
    return 0 if overhead < CPU_TARGET_MS and uss / 1024 < USS_TARGET_KIB else 1


if __name__ == "__main__":
    sys.exit(main())
