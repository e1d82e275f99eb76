"""supervisor.executors.local.pinning: choosing CPU ids (pure) and pinning by inheritance (a real
child process and the real affinity syscalls)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.executors.local import pinning


def test_choose_prefers_the_lowest_consecutive_block() -> None:
    assert pinning.choose_cpus(range(8), taken=[0, 1, 3], count=3) == (4, 5, 6)
    assert pinning.choose_cpus(range(8), taken=[], count=2) == (0, 1)


def test_choose_takes_the_lowest_free_ids_when_no_block_is_left() -> None:
    assert pinning.choose_cpus([0, 2, 4, 6], taken=[], count=2) == (0, 2)


def test_choose_says_none_when_too_few_are_free() -> None:
    assert pinning.choose_cpus(range(4), taken=[0, 1, 2], count=2) is None
    assert pinning.choose_cpus(range(4), taken=[], count=0) == ()


@given(
    allowed=st.sets(st.integers(0, 63), max_size=16),
    taken=st.sets(st.integers(0, 63), max_size=16),
    count=st.integers(0, 16),
)
def test_choose_never_hands_out_a_taken_or_foreign_cpu(
    allowed: set[int], taken: set[int], count: int
) -> None:
    chosen = pinning.choose_cpus(sorted(allowed), taken, count)
    if chosen is None:
        assert count > len(allowed - taken)
    else:
        assert len(chosen) == len(set(chosen)) == count
        assert set(chosen) <= allowed - taken


def test_format_cpu_list() -> None:
    assert pinning.format_cpu_list([6, 0, 1, 2, 3]) == "0-3,6"
    assert pinning.format_cpu_list([5]) == "5"
    assert pinning.format_cpu_list([]) == ""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_a_spawned_process_is_born_pinned_and_the_launcher_gets_its_mask_back() -> None:
    allowed = pinning.allowed_cpus()
    chosen = pinning.choose_cpus(allowed, taken=[allowed[0]], count=1)
    assert chosen is not None
    result: dict[str, object] = {}

    def launch() -> None:  # in a thread of its own, as the daemon's launcher would
        with pinning.inherited_affinity(chosen):
            child = subprocess.Popen(["sleep", "1000"])
        result["child"] = child
        result["after"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=launch)
    thread.start()
    thread.join()
    child = result["child"]
    assert isinstance(child, subprocess.Popen)
    try:
        assert os.sched_getaffinity(child.pid) == set(chosen)
        assert pinning.pinned_cpus(child.pid, allowed) == frozenset(chosen)
        assert result["after"] == set(allowed)
        assert pinning.pinned_cpus(os.getpid(), allowed) == frozenset()  # not pinned
    finally:
        child.kill()
        child.wait()
    assert pinning.pinned_cpus(child.pid, allowed) == frozenset()  # gone


def test_no_cpus_means_no_change() -> None:
    before = os.sched_getaffinity(0)
    with pinning.inherited_affinity(None):
        assert os.sched_getaffinity(0) == before
