"""supervisor.queue.scheduling: examples of each rule, then properties over random queues
(hypothesis): never over-commit, never one GPU to two runs, GPU waits never hold back runs
without GPUs, and a big run starts by the time the runs that held its resources when it started
waiting end.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.queue import scheduling
from supervisor.queue.scheduling import (
    WAIT_BEHIND,
    WAIT_CPUS_MEMORY,
    WAIT_GPUS,
    WAIT_MAX_RUNS,
    WAIT_TEMPLATE,
    Capacity,
    Decision,
    Holding,
    Request,
)

GIB = 1024**3
TWO_GPUS = Capacity(cpus=8, gpu_ids=("0", "1"), memory_bytes=16 * GIB)


def started(decision: Decision) -> list[str]:
    """The ids a decision starts, in order."""
    return [grant.run_id for grant in decision.start]


# -- examples -----------------------------------------------------------------------------------


def test_runs_start_in_queue_order_while_they_fit() -> None:
    queue = [Request("a", "t", cpus=4), Request("b", "t", cpus=4), Request("c", "t", cpus=1)]
    decision = scheduling.decide(TWO_GPUS, [], queue)
    assert started(decision) == ["a", "b"]
    assert decision.waiting == {"c": WAIT_CPUS_MEMORY}


def test_gpus_go_out_in_capacity_order_never_a_held_one() -> None:
    held = [Holding("old", cpus=1, gpu_ids=("0",))]
    queue = [Request("a", "t", gpus=1), Request("b", "t", gpus=1)]
    decision = scheduling.decide(TWO_GPUS, held, queue)
    assert [g.gpu_ids for g in decision.start] == [("1",)]
    assert decision.waiting == {"b": WAIT_GPUS}


def test_gpus_zero_gets_an_empty_list_and_unmanaged_gets_none() -> None:
    decision = scheduling.decide(TWO_GPUS, [], [Request("z", "t", gpus=0), Request("n", "t")])
    assert [g.gpu_ids for g in decision.start] == [(), None]


def test_a_run_waiting_for_a_gpu_does_not_hold_back_one_that_needs_none() -> None:
    held = [Holding("h0", 1, ("0",)), Holding("h1", 1, ("1",))]
    queue = [Request("gpu", "t", cpus=2, gpus=1), Request("cpu", "t", cpus=6)]
    decision = scheduling.decide(TWO_GPUS, held, queue)
    assert started(decision) == ["cpu"]
    assert decision.waiting == {"gpu": WAIT_GPUS}


def test_the_head_of_a_gpu_wait_reserves_the_free_gpus_against_smaller_gpu_runs() -> None:
    held = [Holding("h", cpus=1, gpu_ids=("0",))]
    queue = [Request("two", "t", gpus=2), Request("one", "t", gpus=1), Request("cpu", "t")]
    decision = scheduling.decide(TWO_GPUS, held, queue)
    assert started(decision) == ["cpu"]
    assert decision.waiting == {"two": WAIT_GPUS, "one": WAIT_BEHIND}


def test_the_head_of_a_cpu_wait_reserves_so_small_runs_cannot_starve_it() -> None:
    held = [Holding("h", cpus=6)]
    queue = [Request("big", "t", cpus=4), Request("small", "t", cpus=1)]
    decision = scheduling.decide(TWO_GPUS, held, queue)
    assert started(decision) == []
    assert decision.waiting == {"big": WAIT_CPUS_MEMORY, "small": WAIT_BEHIND}


def test_small_runs_backfill_what_the_head_cannot_use() -> None:
    held = [Holding("h", cpus=4, memory_bytes=12 * GIB)]  # 4 CPUs and 4 GiB free
    queue = [
        Request("big", "t", cpus=2, memory_bytes=10 * GIB),  # short of memory, reserves 2 CPUs
        Request("small", "t", cpus=1),
        Request("also", "t", cpus=1),
        Request("one-too-many", "t", cpus=1),
    ]
    decision = scheduling.decide(TWO_GPUS, held, queue)
    assert started(decision) == ["small", "also"]
    assert decision.waiting["big"] == WAIT_CPUS_MEMORY


def test_a_cpu_head_with_its_gpus_free_keeps_them_from_other_gpu_runs() -> None:
    held = [Holding("h", cpus=7)]
    queue = [
        Request("head", "t", cpus=2, gpus=1),  # has a GPU, lacks a CPU: reserves GPU 0
        Request("other", "t", cpus=0, gpus=1),  # gets GPU 1, not the head's
        Request("third", "t", cpus=0, gpus=1),
    ]
    decision = scheduling.decide(TWO_GPUS, held, queue)
    assert [(g.run_id, g.gpu_ids) for g in decision.start] == [("other", ("1",))]
    assert decision.waiting == {"head": WAIT_CPUS_MEMORY, "third": WAIT_GPUS}


def test_requests_over_the_capacity_can_never_start() -> None:
    queue = [
        Request("cpus", "t", cpus=9),
        Request("gpus", "t", gpus=3),
        Request("mem", "t", memory_bytes=17 * GIB),
        Request("fine", "t", cpus=8),
    ]
    decision = scheduling.decide(TWO_GPUS, [], queue)
    assert started(decision) == ["fine"]
    assert decision.impossible["cpus"] == "asks for 9 CPUs but [resources] cpus is 8"
    assert decision.impossible["gpus"] == "asks for 3 GPUs but this machine has 2"
    assert "[resources] memory" in decision.impossible["mem"]
    none = Capacity(cpus=2, gpu_ids=(), memory_bytes=GIB)
    assert scheduling.too_big(Request("g", "t", gpus=1), none) == (
        "asks for 1 GPUs but this machine has 0"
    )


def test_max_concurrent_of_a_template_and_of_the_daemon() -> None:
    capacity = Capacity(cpus=8, gpu_ids=(), memory_bytes=GIB, max_runs=3)
    queue = [Request("a1", "a"), Request("a2", "a"), Request("b1", "b"), Request("b2", "b")]
    decision = scheduling.decide(
        capacity,
        [Holding("h", 1)],
        queue,
        max_concurrent={"a": 1},
        running_per_template={"a": 0},
    )
    assert started(decision) == ["a1", "b1"]
    assert decision.waiting == {"a2": WAIT_TEMPLATE, "b2": WAIT_MAX_RUNS}


# -- rows after a restart -----------------------------------------------------------------------


def test_rows_rebuild_what_is_held_and_a_restart_never_reuses_a_held_gpu() -> None:
    rows = [
        ("r1", 2, "0", 4 * GIB),
        ("r2", None, None, None),  # an old row: default CPU count, no GPU, no cap
    ]
    rebuilt = scheduling.held_from_rows(rows, TWO_GPUS)
    assert rebuilt.problems == ()
    assert rebuilt.held == (Holding("r1", 2, ("0",), 4 * GIB), Holding("r2", 1, (), 0))
    decision = scheduling.decide(TWO_GPUS, rebuilt.held, [Request("n", "t", gpus=1)])
    assert [g.gpu_ids for g in decision.start] == [("1",)]


def test_garbage_rows_from_other_programs_are_taken_defensively() -> None:
    rows: list[tuple[str, object, object, object]] = [
        ("a", "four", "0; 1", -5),
        ("b", True, "1,GPU-x,,", 1.5),
        ("c", 3, 42, None),
    ]
    rebuilt = scheduling.held_from_rows(rows, TWO_GPUS)
    assert rebuilt.held == (
        Holding("a", 1, ("0", "1"), 0),
        Holding("b", 1, (), 0),  # GPU 1 is already a's: held once
        Holding("c", 3, (), 0),
    )
    text = "\n".join(rebuilt.problems)
    assert "GPU 1 is recorded for both run a and b" in text
    assert "'GPU-x', not one of this machine's" in text
    assert "cpus 'four' is not a count" in text
    assert "gpu_ids 42 is not text" in text
    decision = scheduling.decide(TWO_GPUS, rebuilt.held, [Request("n", "t", gpus=1)])
    assert decision.waiting == {"n": WAIT_GPUS}


def test_gpu_ids_text_round_trips() -> None:
    assert scheduling.format_gpu_ids(("0", "3")) == "0,3"
    assert scheduling.format_gpu_ids(()) == ""
    assert scheduling.format_gpu_ids(None) is None
    assert scheduling.parse_gpu_ids("0,3") == ("0", "3")
    assert scheduling.parse_gpu_ids("") == ()


# -- properties ---------------------------------------------------------------------------------

TEMPLATES = ("a", "b", "c")


@st.composite
def capacities(draw: st.DrawFn) -> Capacity:
    """A machine: a few CPUs, GPUs and memory units, maybe a run limit."""
    return Capacity(
        cpus=draw(st.integers(1, 16)),
        gpu_ids=tuple(str(i) for i in range(draw(st.integers(0, 4)))),
        memory_bytes=draw(st.integers(0, 64)),
        max_runs=draw(st.none() | st.integers(0, 12)),
    )


@st.composite
def holdings(draw: st.DrawFn, capacity: Capacity) -> list[Holding]:
    """Runs already holding resources, together within the capacity."""
    held: list[Holding] = []
    cpus, memory, gpus = capacity.cpus, capacity.memory_bytes, list(capacity.gpu_ids)
    for n in range(draw(st.integers(0, 6))):
        c = draw(st.integers(0, cpus))
        m = draw(st.integers(0, memory))
        g = draw(st.integers(0, len(gpus)))
        held.append(Holding(f"h{n}", c, tuple(gpus[:g]), m))
        cpus, memory, gpus = cpus - c, memory - m, gpus[g:]
    return held


def requests(prefix: str) -> st.SearchStrategy[list[Request]]:
    """Queues of pending runs, some too big for any machine drawn here."""
    one = st.builds(
        Request,
        run_id=st.just(""),
        template=st.sampled_from(TEMPLATES),
        cpus=st.integers(0, 20),
        gpus=st.none() | st.integers(0, 5),
        memory_bytes=st.none() | st.integers(0, 80),
    )
    return st.lists(one, max_size=12).map(
        lambda rs: [
            Request(f"{prefix}{i}", r.template, r.cpus, r.gpus, r.memory_bytes)
            for i, r in enumerate(rs)
        ]
    )


@dataclass
class Scenario:
    capacity: Capacity
    held: list[Holding]
    queue: list[Request]
    limits: dict[str, int | None]
    running: dict[str, int]

    def decide(self, queue: Sequence[Request] | None = None) -> Decision:
        return scheduling.decide(
            self.capacity,
            self.held,
            self.queue if queue is None else queue,
            max_concurrent=self.limits,
            running_per_template=self.running,
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A capacity, what is held in it, a queue, per-template limits and counts."""
    capacity = draw(capacities())
    return Scenario(
        capacity,
        draw(holdings(capacity)),
        draw(requests("p")),
        {t: draw(st.none() | st.integers(0, 3)) for t in TEMPLATES},
        {t: draw(st.integers(0, 3)) for t in TEMPLATES},
    )


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_never_over_commit_and_never_one_gpu_to_two_runs(s: Scenario) -> None:
    decision = s.decide()
    by_id = {r.run_id: r for r in s.queue}
    ids = [g.run_id for g in decision.start]
    # Every candidate is started, waits, or is impossible: exactly one of the three.
    assert sorted([*ids, *decision.waiting, *decision.impossible]) == sorted(by_id)
    assert sum(h.cpus for h in s.held) + sum(g.cpus for g in decision.start) <= s.capacity.cpus
    memory = sum(h.memory_bytes for h in s.held) + sum(g.memory_bytes or 0 for g in decision.start)
    assert memory <= s.capacity.memory_bytes
    gpus = [gpu for h in s.held for gpu in h.gpu_ids]
    gpus += [gpu for g in decision.start for gpu in g.gpu_ids or ()]
    assert len(gpus) == len(set(gpus))
    assert set(gpus) <= set(s.capacity.gpu_ids)
    for grant in decision.start:
        request = by_id[grant.run_id]
        assert grant.cpus == request.cpus and grant.memory_bytes == request.memory_bytes
        if request.gpus is None:
            assert grant.gpu_ids is None
        else:
            assert grant.gpu_ids is not None and len(grant.gpu_ids) == request.gpus
    if s.capacity.max_runs is not None:
        assert len(ids) <= max(0, s.capacity.max_runs - len(s.held))
    for template, limit in s.limits.items():
        if limit is not None:
            new = sum(1 for i in ids if by_id[i].template == template)
            assert new <= max(0, limit - s.running[template])


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_the_first_runnable_run_in_the_queue_always_starts(s: Scenario) -> None:
    s.held = []
    s.capacity = Capacity(s.capacity.cpus, s.capacity.gpu_ids, s.capacity.memory_bytes)
    s.limits = dict.fromkeys(TEMPLATES)
    decision = s.decide()
    possible = [r for r in s.queue if scheduling.too_big(r, s.capacity) is None]
    if possible:
        assert started(decision)[0] == possible[0].run_id


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_runs_waiting_for_a_gpu_never_hold_back_runs_that_need_none(s: Scenario) -> None:
    # Every GPU held: each run that asks for one waits for a GPU. The runs that need none
    # must start exactly as they would if those GPU runs were not in the queue at all.
    s.held = [*s.held, Holding("all-gpus", 0, tuple(s.capacity.gpu_ids))]
    s.held = [
        h if h.run_id == "all-gpus" else Holding(h.run_id, h.cpus, (), h.memory_bytes)
        for h in s.held
    ]
    without = [r for r in s.queue if r.gpu_count == 0]
    with_gpu_runs = s.decide()
    assert started(with_gpu_runs) == started(s.decide(without))
    assert all(
        with_gpu_runs.waiting[r.run_id] in (WAIT_GPUS, WAIT_BEHIND, WAIT_MAX_RUNS, WAIT_TEMPLATE)
        for r in s.queue
        if r.gpu_count and r.run_id not in with_gpu_runs.impossible
    )


@dataclass
class Running:
    holding: Holding
    ends_at: int


def small_requests(capacity: Capacity) -> st.SearchStrategy[Request]:
    """Runs that ask for little: at most 2 CPUs, one GPU, a quarter of the memory."""
    return st.builds(
        Request,
        run_id=st.just(""),
        template=st.just("t"),
        cpus=st.integers(0, min(2, capacity.cpus)),
        gpus=st.none() | st.integers(0, min(1, len(capacity.gpu_ids))),
        memory_bytes=st.none() | st.integers(0, capacity.memory_bytes // 4),
    )


@settings(max_examples=300, deadline=None)
@given(
    capacity=capacities().map(lambda c: Capacity(c.cpus, c.gpu_ids, c.memory_bytes)),
    data=st.data(),
)
def test_a_big_run_is_never_starved_by_a_stream_of_small_ones(
    capacity: Capacity, data: st.DataObject
) -> None:
    """Ticks of a simulated queue: the oldest run is big, small runs arrive on every tick.

    The big run first waits for GPUs (if it needs any) at most until the GPU holders of tick 0
    end; from then on it starts at the latest when every run holding at that tick has ended.
    """
    big = data.draw(
        st.builds(
            Request,
            run_id=st.just("big"),
            template=st.just("t"),
            cpus=st.integers(0, capacity.cpus),
            gpus=st.none() | st.integers(0, len(capacity.gpu_ids)),
            memory_bytes=st.none() | st.integers(0, capacity.memory_bytes),
        )
    )
    running = {
        h.run_id: Running(h, data.draw(st.integers(1, 6))) for h in data.draw(holdings(capacity))
    }
    gpu_holders_end = max((r.ends_at for r in running.values() if r.holding.gpu_ids), default=0)
    queue: list[Request] = [big]
    names = itertools.count()
    wait_bound: int | None = None
    for tick in range(200):
        running = {k: r for k, r in running.items() if r.ends_at > tick}
        batch = next(names)
        small = data.draw(st.lists(small_requests(capacity), max_size=3))
        queue += [
            Request(f"s{batch}-{i}", "t", r.cpus, r.gpus, r.memory_bytes)
            for i, r in enumerate(small)
        ]
        decision = scheduling.decide(capacity, [r.holding for r in running.values()], queue)
        if "big" in started(decision):
            assert wait_bound is None or tick <= wait_bound
            return
        reason = decision.waiting["big"]
        assert reason in (WAIT_GPUS, WAIT_CPUS_MEMORY)
        if reason == WAIT_GPUS:
            assert tick < gpu_holders_end
        elif wait_bound is None:
            wait_bound = max(r.ends_at for r in running.values())
        for grant in decision.start:
            holding = Holding(
                grant.run_id, grant.cpus, grant.gpu_ids or (), grant.memory_bytes or 0
            )
            running[grant.run_id] = Running(holding, tick + data.draw(st.integers(1, 6)))
        queue = [r for r in queue if r.run_id not in started(decision)]
    raise AssertionError("the big run never started")
