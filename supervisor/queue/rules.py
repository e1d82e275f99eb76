"""The queue's pure decisions (SPEC section 11): retries, their delay, sweeps, dependency cycles.

No database and no processes here: the store asks SQL, the daemon acts; this module decides.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from supervisor.errors import ValidationError
from supervisor.outcome import Outcome
from supervisor.settings import RETRY_ANY_EXIT, RETRY_EXIT_PREFIX
from supervisor.states import RunStatus

# A retry's delay doubles each attempt, up to this (SPEC section 11: "at most an hour").
MAX_RETRY_DELAY_SECONDS = 3600.0
# A sweep larger than this is refused: a typo in a value list must not queue a million runs.
MAX_SWEEP_RUNS = 10_000
SWEEP_VALUE_SEPARATOR = ","


def attempt_number(value: int | None) -> int:
    """The attempt a row is on: NULL (a row another program wrote) or nonsense counts as 1."""
    return value if value is not None and value >= 1 else 1


def retry_delay_seconds(base: float, attempt: int) -> float:
    """Delay before attempt `attempt` + 1: base, doubled for each attempt after the first."""
    exponent = max(0, attempt - 1)
    if base <= 0:
        return 0.0
    # Compare before computing 2**exponent so that a huge attempt number cannot overflow.
    if exponent >= 64 or base * 2.0**exponent >= MAX_RETRY_DELAY_SECONDS:
        return MAX_RETRY_DELAY_SECONDS
    return base * 2.0**exponent


def outcome_matches(kind: str | None, retry_on: Iterable[str]) -> bool:
    """True if an outcome of this kind is one `retry_on` names ("exit:any" covers every code)."""
    if kind is None:
        return False
    names = set(retry_on)
    if kind in names:
        return True
    return kind.startswith(RETRY_EXIT_PREFIX) and RETRY_ANY_EXIT in names


@dataclass(frozen=True)
class RetryPlan:
    """The next attempt of a run that failed with a retryable outcome."""

    attempt: int  # the next attempt's number
    delay_seconds: float
    not_before: datetime
    reason: str  # for run_events: the failed attempt's outcome, and what comes next


def plan_retry(
    out: Outcome,
    *,
    attempt: int | None,
    max_attempts: int,
    retry_on: Sequence[str],
    delay_seconds: float,
    now: datetime,
    what: str | None = None,
) -> RetryPlan | None:
    """The retry of a run that ended with `out` on `attempt`, or None when it is final.

    Only a FAILED outcome with a kind (a run that was started) can be retried: a cancel never
    is, nor a run that could not be started (its outcome has no kind). `what` says how the
    attempt ended, for run_events (default: the outcome's reason).
    """
    if out.status != RunStatus.FAILED or not outcome_matches(out.kind, retry_on):
        return None
    current = attempt_number(attempt)
    if current >= max_attempts:
        return None
    delay = retry_delay_seconds(delay_seconds, current)
    reason = (
        f"retry: attempt {current} of {max_attempts} ended {out.kind} ({what or out.reason}); "
        f"attempt {current + 1} in {delay:g} s"
    )
    return RetryPlan(current + 1, delay, now + timedelta(seconds=delay), reason)


# -- sweeps -------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    """One combination of a sweep: its KEY=VALUE settings, in the order given."""

    settings: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """The run's name: the values it was given, e.g. "channels=10 load=5"."""
        return " ".join(f"{key}={value}" for key, value in self.settings)

    def as_set_pairs(self) -> list[str]:
        """The settings as --set KEY=VALUE arguments (values are parsed the same way)."""
        return [f"{key}={value}" for key, value in self.settings]


def parse_sweep(option: str) -> tuple[str, list[str]]:
    """KEY=V1,V2,... into its key and values; ValidationError for a malformed one."""
    key, sep, raw = option.partition("=")
    if not sep or not key:
        raise ValidationError(f"--sweep {option!r}: expected KEY=V1,V2,...")
    try:
        values = split_sweep_values(raw)
    except ValueError as exc:
        raise ValidationError(f"--sweep {option!r}: {exc}") from None
    if any(v == "" for v in values):
        raise ValidationError(f"--sweep {option!r}: an empty value in the list")
    return key, values


_CLOSERS = {"[": "]", "{": "}"}
_QUOTES = ('"', "'")


def split_sweep_values(raw: str) -> list[str]:
    """A sweep's value list split at the commas outside brackets, braces and quotes (SPEC 7):
    `[1,2],[3,4]` is two values, `a,"b,c"` two. ValueError when a bracket or quote is left open
    or closed without being opened, so a typo is refused rather than split wrongly."""
    values: list[str] = []
    open_brackets: list[str] = []
    start = i = 0
    while i < len(raw):
        char = raw[i]
        if char in _QUOTES:
            i = _past_quote(raw, i)
            continue
        _track_bracket(char, open_brackets)
        if char == SWEEP_VALUE_SEPARATOR and not open_brackets:
            values.append(raw[start:i])
            start = i + 1
        i += 1
    if open_brackets:
        raise ValueError(f"a bracket is not closed (expected {open_brackets[-1]!r})")
    values.append(raw[start:])
    return [_unquote_single(v) for v in values]


def _track_bracket(char: str, open_brackets: list[str]) -> None:
    """Push the closer an opening bracket expects, pop it at its closer (ValueError if wrong)."""
    if char in _CLOSERS:
        open_brackets.append(_CLOSERS[char])
    elif char in _CLOSERS.values() and (not open_brackets or open_brackets.pop() != char):
        raise ValueError(f"{char!r} closes nothing")


def _past_quote(raw: str, opening: int) -> int:
    """The index just past the quote that closes the one at `opening` (JSON's \\" inside a
    double-quoted value does not close it); ValueError if none does."""
    quote = raw[opening]
    i = opening + 1
    while i < len(raw):
        if raw[i] == "\\" and quote == '"':
            i += 2
            continue
        if raw[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"a {quote} quote is not closed")


def _unquote_single(value: str) -> str:
    # 'b,c' is there only to keep the comma: the value is the text inside, as a JSON string
    # (a double-quoted value already is one).
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return json.dumps(value[1:-1])
    return value


def expand_sweep(options: Sequence[str]) -> list[SweepPoint]:
    """Every combination of the --sweep options (their cartesian product), first key slowest."""
    axes = [parse_sweep(o) for o in options]
    keys = [k for k, _ in axes]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValidationError(f"--sweep names {', '.join(duplicates)} more than once")
    total = 1
    for _, values in axes:
        total *= len(values)
    if total > MAX_SWEEP_RUNS:
        raise ValidationError(f"the sweep has {total} combinations; at most {MAX_SWEEP_RUNS}")
    combos = itertools.product(*[[(k, v) for v in values] for k, values in axes])
    return [SweepPoint(tuple(combo)) for combo in combos]


# -- dependency cycles ----------------------------------------------------------


def find_cycles(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Runs caught in a dependency cycle -> the cycle in words ("a -> b -> a").

    `edges` are (run, depends_on). Every run of a strongly connected component with more than
    one run, or that depends on itself, is in a cycle; they all get the same description.
    """
    graph: dict[str, list[str]] = {}
    for run, dep in edges:
        graph.setdefault(run, []).append(dep)
        graph.setdefault(dep, [])
    out: dict[str, str] = {}
    for component in _components(graph):
        members = set(component)
        first = min(component)
        if len(component) == 1 and first not in graph[first]:
            continue
        words = " -> ".join(_cycle_through(first, graph, members))
        for run in component:
            out[run] = words
    return out


def _components(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = graph[node]
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _cycle_through(start: str, graph: Mapping[str, list[str]], members: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return [start, start]
