"""CPU pinning for `[resources] pin_cpus = true`: which CPU ids a run gets, and pinning it.

A run is pinned from its first instruction by inheritance: the launching thread narrows its own
affinity to the run's CPUs around the spawn of the keeper (`inherited_affinity`), so the keeper
and everything it starts are born pinned, with no window in which a child could be forked
unpinned. Affinity is per thread on Linux, so the daemon's other threads are not touched, and
the launching thread gets its own mask back at once.

Which ids a RUNNING run holds is not in its row (only the count, `cpus`); after a restart it is
read back from the keeper's affinity (`pinned_cpus`): the keeper never changes its own mask,
whereas a simulation may narrow its threads' masks itself (OpenMP binding does).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable, Iterator, Sequence


def allowed_cpus() -> tuple[int, ...]:
    """The CPU ids this process may run on (its affinity at start), sorted."""
    return tuple(sorted(os.sched_getaffinity(0)))


def choose_cpus(allowed: Sequence[int], taken: Iterable[int], count: int) -> tuple[int, ...] | None:
    """`count` free CPU ids for a run, or None if fewer are free.

    Prefers a block of consecutive ids (neighbours tend to share a cache), the lowest such
    block; else the lowest free ids.
    """
    if count <= 0:
        return ()
    free = sorted(set(allowed) - set(taken))
    if count > len(free):
        return None
    for start in range(len(free) - count + 1):
        block = free[start : start + count]
        if block[-1] - block[0] == count - 1:
            return tuple(block)
    return tuple(free[:count])


def pinned_cpus(pid: int, allowed: Collection[int]) -> frozenset[int]:
    """The CPUs process `pid` is pinned to: empty when it may use all of `allowed` or is gone."""
    try:
        mask = frozenset(os.sched_getaffinity(pid))
    except (ProcessLookupError, PermissionError):
        return frozenset()
    return mask if not mask >= set(allowed) else frozenset()


@contextlib.contextmanager
def inherited_affinity(cpus: Collection[int] | None) -> Iterator[None]:
    """Within the block, processes this thread spawns start pinned to `cpus` (None: as now)."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """CPU ids in the kernel's list form ("0-3,6"), as taskset and /proc/<pid>/status write it."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            first, last = ids[start], ids[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(parts)
