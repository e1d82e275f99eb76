"""The built-in ``erlang-demo`` simulation: an M/M/c/c loss system (Erlang B).

Calls arrive as a Poisson stream with rate A (the offered load in erlangs,
since the mean holding time is 1) at a group of c channels; a call that finds
every channel busy is lost. For each offered load the simulation estimates
the blocking probability over several independent iterations, reports the
mean with a Student-t confidence interval, and compares it with the exact
Erlang B value. It is a real event-driven simulation, so a run takes real CPU
time and its progress is real.

Run as ``python -m supervisor.demo_sim [--config config.json]`` (the daemon
does this, with the run directory as working directory). The configuration is
a JSON object; every key is optional:

=================  ======  ========  ============================================
key                type    default   meaning
=================  ======  ========  ============================================
``channels``       int     10        number of channels c (1 .. 100000)
``erlang_start``   float   2.0       first offered load, erlangs (> 0)
``erlang_stop``    float   12.0      last offered load, included (>= start)
``erlang_step``    float   2.0       load increment (> 0); at most 10000 loads
``erlang``         float   -         one offered load: start and stop both (> 0)
``iterations``     int     10        independent iterations per load (>= 2)
``requests``       int     20000     call arrivals per iteration (>= 1)
``seed``           int     1         base seed; same config and seed, same results
``pace_seconds``   float   0.0       sleep between iterations, to watch a demo
=================  ======  ========  ============================================

An unknown key is a configuration error, as is a key with a wrong type or an
impossible value: a typo (``chanels``) must not run the defaults unnoticed
(SPEC section 2). ``runsup submit`` checks this before it queues the run.

Progress goes to ``$RUNSUP_PROGRESS_FILE`` (else ``progress.jsonl`` in the
working directory), one JSON object a line, each flushed with a single
``write``: ``start``, then per load ``erlang_start``, ``iteration`` (1-based)
and ``erlang_complete``, and finally ``complete``. Results are written to
``results.json`` in the working directory just before ``complete``: a JSON
object (SPEC section 15) with ``channels``, ``iterations``, ``requests``,
``seed`` and ``loads``, a list of one object per load (``erlang``,
``mean_blocking``, ``ci_low``, ``ci_high``, ``ci_half_width``,
``exact_blocking``, ...); a run of one load also has that load's values at the
top level, so that ``runsup results`` shows them as columns of a sweep.

Exit codes:

* 0 -- all loads done, ``results.json`` written, ``complete`` record last.
* 1 -- an unexpected exception; an ``error`` record with the traceback is last.
* 2 -- bad configuration; an ``error`` record says which key and why.
* 128 + signum (143 for SIGTERM, 130 for SIGINT) -- cancelled. The signal
  handler only sets a flag; the simulation looks at it every few thousand
  arrivals and during ``pace_seconds`` sleeps, so it stops within
  milliseconds, writes a last ``error`` record ``"cancelled by signal
  SIGTERM"`` (with ``signal`` and ``exit_code``), and exits with the shell's
  convention for a signal death. ``results.json`` is not written. The
  supervisor treats a simulation that exits by itself after a requested
  cancel as CANCELLED and keeps this code (SPEC section 6); a SIGTERM that
  nobody asked the supervisor for shows up as exit code 143, not as a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import heapq
import json
import math
import os
import signal
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from types import FrameType
from typing import Any, Final, NamedTuple, TextIO

# Defaults: six loads around the knee of the c=10 Erlang B curve, finishing in
# about a second, with intervals narrow enough to show agreement with theory.
DEFAULT_CHANNELS: Final = 10
DEFAULT_ERLANG_START: Final = 2.0
DEFAULT_ERLANG_STOP: Final = 12.0
DEFAULT_ERLANG_STEP: Final = 2.0
DEFAULT_ITERATIONS: Final = 10
DEFAULT_REQUESTS: Final = 20_000
DEFAULT_SEED: Final = 1
DEFAULT_PACE_SECONDS: Final = 0.0

# Limits that turn typos (step 1e-9, a million channels) into a clear error
# instead of a run that never ends or eats the machine's memory.
MAX_CHANNELS: Final = 100_000
MAX_LOADS: Final = 10_000
MIN_ITERATIONS: Final = 2  # a confidence interval needs at least two samples
MIN_REQUESTS: Final = 1

# A load counts as "up to erlang_stop" if it overshoots by at most this many
# steps, so that 0.1 + 0.1 + ... still includes 1.0.
LOAD_STEP_TOLERANCE: Final = 1e-9
# Loads are rounded to this many decimals to drop float noise such as
# 0.30000000000000004 from records and results.
LOAD_DECIMALS: Final = 10

CONFIDENCE: Final = 0.95
# Arrivals simulated between two looks at the cancel flag: about a
# millisecond of work, so cancelling is prompt while the check costs nothing.
CANCEL_CHECK_EVERY: Final = 2048
# Longest single sleep while pacing, so a cancel is noticed quickly.
PACE_SLICE_SECONDS: Final = 0.05

RESULTS_FILE: Final = "results.json"
DEFAULT_PROGRESS_FILE: Final = "progress.jsonl"
PROGRESS_ENV: Final = "RUNSUP_PROGRESS_FILE"

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
# Shell convention for "ended because of signal N".
SIGNAL_EXIT_BASE: Final = 128

PROG: Final = "erlang-demo"

# Two-sided Student t quantiles t(1 - alpha/2, df) for df = 1..30 (computed by
# numerical integration of the t density; checked in the unit tests).
_T_TABLE: Final[dict[float, tuple[float, ...]]] = {
    0.95: (
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582,
        2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
        2.200985, 2.178813, 2.160369, 2.144787, 2.131450,
        2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
        2.079614, 2.073873, 2.068658, 2.063899, 2.059539,
        2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
    ),
    0.99: (
        63.656741, 9.924843, 5.840909, 4.604095, 4.032143,
        3.707428, 3.499483, 3.355387, 3.249836, 3.169273,
        3.105807, 3.054540, 3.012276, 2.976843, 2.946713,
        2.920782, 2.898231, 2.878440, 2.860935, 2.845340,
        2.831360, 2.818756, 2.807336, 2.796940, 2.787436,
        2.778715, 2.770683, 2.763262, 2.756386, 2.749996,
    ),
}  # fmt: skip
# Standard normal quantiles z(1 - alpha/2) for the same confidence levels.
_Z_VALUES: Final[dict[float, float]] = {0.95: 1.959963984540054, 0.99: 2.5758293035489004}

_CONFIG_KEYS: Final = (
    "channels",
    "erlang_start",
    "erlang_stop",
    "erlang_step",
    "erlang",
    "iterations",
    "requests",
    "seed",
    "pace_seconds",
)


class DemoConfigError(ValueError):
    """The simulation's configuration is unreadable or has a bad value."""


class Cancelled(Exception):
    """A cancel signal arrived; the run stops without finishing."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"cancelled by signal {signal.Signals(signum).name}")
        self.signum = signum


# ---------------------------------------------------------------- theory


def erlang_b(load: float, channels: int) -> float:
    """Exact Erlang B blocking probability for `load` erlangs on `channels` channels."""
    if not math.isfinite(load) or load < 0:
        raise ValueError(f"load must be a finite number >= 0, got {load!r}")
    if channels < 0:
        raise ValueError(f"channels must be >= 0, got {channels!r}")
    # The recursion keeps every term in [0, 1], unlike A^c/c! over a sum,
    # which overflows for a few hundred channels.
    blocking = 1.0
    for k in range(1, channels + 1):
        blocking = load * blocking / (k + load * blocking)
    return blocking


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student t critical value for `df` degrees of freedom (0.95 or 0.99)."""
    if confidence not in _T_TABLE:
        raise ValueError(f"confidence must be one of {sorted(_T_TABLE)}, got {confidence!r}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df!r}")
    table = _T_TABLE[confidence]
    if df <= len(table):
        return table[df - 1]
    # Cornish-Fisher expansion of t around the normal quantile: within 1e-6
    # of the exact value from df = 30 on, far better than the bare normal.
    z = _Z_VALUES[confidence]
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


class Estimate(NamedTuple):
    """Sample mean of a probability with its confidence interval."""

    mean: float
    ci_low: float
    ci_high: float
    half_width: float


def summarize(samples: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student-t confidence interval of independent probability samples."""
    n = len(samples)
    if n < MIN_ITERATIONS:
        raise ValueError(f"need at least {MIN_ITERATIONS} samples, got {n}")
    mean = math.fsum(samples) / n
    variance = math.fsum((x - mean) ** 2 for x in samples) / (n - 1)
    half_width = t_quantile(n - 1, confidence) * math.sqrt(variance / n)
    # The estimate is a probability: an interval reaching below 0 or above 1
    # says nothing more than one stopping there.
    return Estimate(
        mean=mean,
        ci_low=max(0.0, mean - half_width),
        ci_high=min(1.0, mean + half_width),
        half_width=half_width,
    )


# ------------------------------------------------------------ simulation


def occupancy_cdf(load: float, channels: int) -> list[float]:
    """Cumulative stationary distribution of busy channels (Poisson truncated at c)."""
    if not load > 0:
        raise ValueError(f"load must be > 0, got {load!r}")
    # Log space, shifted by the largest term, so loads of thousands of
    # erlangs do not overflow A^k / k!.
    log_load = math.log(load)
    log_terms = [k * log_load - math.lgamma(k + 1) for k in range(channels + 1)]
    top = max(log_terms)
    cumulative: list[float] = []
    total = 0.0
    for term in log_terms:
        total += math.exp(term - top)
        cumulative.append(total)
    return [x / total for x in cumulative]


def iteration_rng(seed: int, load_index: int, iteration: int) -> Random:
    """The random stream of one iteration, fixed by (seed, load index, iteration)."""
    # A string seed is hashed with SHA-512 by Random, so the streams are
    # unrelated to each other, identical on every run and platform, and do not
    # depend on PYTHONHASHSEED, pacing or the order iterations are run in.
    return Random(f"{PROG}:{seed}:{load_index}:{iteration}")


def simulate_iteration(
    load: float,
    channels: int,
    requests: int,
    rng: Random,
    occupancy: Sequence[float] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> float:
    """Simulate `requests` Poisson arrivals at an M/M/c/c system; return the blocked fraction.

    `occupancy` is `occupancy_cdf(load, channels)` (computed when omitted);
    `check_cancel` is called every CANCEL_CHECK_EVERY arrivals and may raise
    to abandon the iteration.
    """
    if not (math.isfinite(load) and load > 0):
        raise ValueError(f"load must be a finite number > 0, got {load!r}")
    if channels < 1 or requests < 1:
        raise ValueError(f"channels and requests must be >= 1, got {channels}, {requests}")
    if occupancy is None:
        occupancy = occupancy_cdf(load, channels)
    random = rng.random
    log = math.log
    heappush = heapq.heappush
    heappop = heapq.heappop
    mean_interarrival = 1.0 / load

    # Start in steady state rather than empty, so short iterations carry no
    # warm-up bias and nothing has to be thrown away: the first arrival comes
    # at time 0 and finds a number of busy channels drawn from the stationary
    # law, each with an Exp(1) residual holding time (memoryless). By PASTA
    # the law seen by arrivals is the stationary one, so every later arrival
    # sees it too. (Drawing the state at time 0 and the first arrival at an
    # Exp time later would not do: that arrival follows an unusually long
    # arrival-free gap -- the inspection paradox -- and sees too few busy.)
    busy = bisect_right(occupancy, random())
    # -log(1 - U) is Exp(1); written out instead of rng.expovariate, whose
    # method call would cost about a fifth of the loop's time.
    ends = [-log(1.0 - random()) for _ in range(busy)]
    heapq.heapify(ends)

    now = 0.0
    blocked = 0
    done = 0
    while done < requests:
        if check_cancel is not None:
            check_cancel()
        chunk = min(CANCEL_CHECK_EVERY, requests - done)
        for _ in range(chunk):
            # Free the channels whose calls ended before this arrival.
            while ends and ends[0] <= now:
                heappop(ends)
            if len(ends) < channels:
                heappush(ends, now - log(1.0 - random()))
            else:
                blocked += 1
            now -= log(1.0 - random()) * mean_interarrival
        done += chunk
    return blocked / requests


# ----------------------------------------------------------- configuration


class DemoConfig(NamedTuple):
    """A validated configuration of the erlang-demo simulation."""

    channels: int = DEFAULT_CHANNELS
    erlang_start: float = DEFAULT_ERLANG_START
    erlang_stop: float = DEFAULT_ERLANG_STOP
    erlang_step: float = DEFAULT_ERLANG_STEP
    iterations: int = DEFAULT_ITERATIONS
    requests: int = DEFAULT_REQUESTS
    seed: int = DEFAULT_SEED
    pace_seconds: float = DEFAULT_PACE_SECONDS

    def loads(self) -> list[float]:
        """The offered loads: start, start+step, ... up to and including stop."""
        return [
            round(self.erlang_start + i * self.erlang_step, LOAD_DECIMALS)
            for i in range(_load_count(self.erlang_start, self.erlang_stop, self.erlang_step))
        ]


def _load_count(start: float, stop: float, step: float) -> int:
    # Multiplying (start + i*step) rather than summing keeps float error from
    # accumulating; the tolerance keeps a stop that is a whole number of steps.
    return math.floor((stop - start) / step + LOAD_STEP_TOLERANCE) + 1


def _int_value(
    raw: dict[str, Any], key: str, default: int, low: int | None, high: int | None
) -> int:
    value = raw.get(key, default)
    # bool is an int subclass in Python, but `true` is no channel count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise DemoConfigError(f"{key!r} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise DemoConfigError(f"{key!r} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise DemoConfigError(f"{key!r} must be <= {high}, got {value}")
    return value


def _float_value(raw: dict[str, Any], key: str, default: float, *, positive: bool) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DemoConfigError(f"{key!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise DemoConfigError(f"{key!r} must be finite, got {value!r}")
    if positive and number <= 0:
        raise DemoConfigError(f"{key!r} must be > 0, got {value!r}")
    if number < 0:
        raise DemoConfigError(f"{key!r} must be >= 0, got {value!r}")
    return number


def parse_config(raw: object) -> DemoConfig:
    """Validate a decoded JSON configuration; DemoConfigError names the first problem."""
    if not isinstance(raw, dict):
        raise DemoConfigError(f"the configuration must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _CONFIG_KEYS)
    if unknown:
        raise DemoConfigError(unknown_keys_words(unknown))
    start = _float_value(raw, "erlang_start", DEFAULT_ERLANG_START, positive=True)
    stop = _float_value(raw, "erlang_stop", DEFAULT_ERLANG_STOP, positive=True)
    if "erlang" in raw:
        if "erlang_start" in raw or "erlang_stop" in raw:
            raise DemoConfigError("give 'erlang' (one load) or 'erlang_start'/'erlang_stop'")
        start = stop = _float_value(raw, "erlang", DEFAULT_ERLANG_START, positive=True)
    config = DemoConfig(
        channels=_int_value(raw, "channels", DEFAULT_CHANNELS, 1, MAX_CHANNELS),
        erlang_start=start,
        erlang_stop=stop,
        erlang_step=_float_value(raw, "erlang_step", DEFAULT_ERLANG_STEP, positive=True),
        iterations=_int_value(raw, "iterations", DEFAULT_ITERATIONS, MIN_ITERATIONS, None),
        requests=_int_value(raw, "requests", DEFAULT_REQUESTS, MIN_REQUESTS, None),
        seed=_int_value(raw, "seed", DEFAULT_SEED, None, None),
        pace_seconds=_float_value(raw, "pace_seconds", DEFAULT_PACE_SECONDS, positive=False),
    )
    if config.erlang_stop < config.erlang_start:
        raise DemoConfigError(
            f"'erlang_stop' ({config.erlang_stop}) must be >= 'erlang_start' "
            f"({config.erlang_start})"
        )
    count = _load_count(config.erlang_start, config.erlang_stop, config.erlang_step)
    if count > MAX_LOADS:
        raise DemoConfigError(
            f"'erlang_start'..'erlang_stop' by 'erlang_step' gives {count} loads; "
            f"at most {MAX_LOADS} are allowed"
        )
    return config


def unknown_keys_words(unknown: Sequence[str]) -> str:
    """The error for keys the simulation does not know, with the likeliest meant key."""
    words = []
    for key in unknown:
        close = difflib.get_close_matches(key, _CONFIG_KEYS, n=1)
        words.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) != 1 else ""
    return f"unknown config key{plural} {', '.join(words)}; known: {', '.join(_CONFIG_KEYS)}"


def load_config(path: Path | None) -> DemoConfig:
    """Read and validate the JSON configuration file; None means all defaults."""
    if path is None:
        return DemoConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DemoConfigError(f"cannot read {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DemoConfigError(f"{path} is not valid JSON: {exc}") from exc
    return parse_config(raw)


# ------------------------------------------------------------ progress


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class ProgressWriter:
    """Appends progress records to progress.jsonl, one whole line per write."""

    def __init__(self, path: Path) -> None:
        # O_APPEND and one write() per line: a reader never sees two records
        # interleaved, and a crash leaves at most one unterminated last line,
        # which the daemon ignores until it is complete.
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, record_type: str, **fields: Any) -> None:
        """Append one record of `record_type` with a UTC timestamp."""
        record = {"type": record_type, "ts": _utc_now(), **fields}
        data = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        """Close the file; later writes fail."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProgressWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress_path() -> Path:
    """Where progress goes: $RUNSUP_PROGRESS_FILE, else progress.jsonl in the cwd."""
    configured = os.environ.get(PROGRESS_ENV)
    return Path(configured) if configured else Path.cwd() / DEFAULT_PROGRESS_FILE


# ------------------------------------------------------------------ run


class CancelFlag:
    """Set by SIGTERM/SIGINT; the simulation checks it between bits of work."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the first signal only, do nothing else."""
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raise Cancelled if a signal arrived."""
        if self.signum is not None:
            raise Cancelled(self.signum)


class LoadResult(NamedTuple):
    """The outcome for one offered load, as written to results.json."""

    erlang: float
    channels: int
    iterations: int
    requests: int
    mean_blocking: float
    ci_low: float
    ci_high: float
    ci_half_width: float
    exact_blocking: float


def _pace(seconds: float, check_cancel: Callable[[], None]) -> None:
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        check_cancel()
        time.sleep(min(remaining, PACE_SLICE_SECONDS))
    check_cancel()


def simulate_load(
    config: DemoConfig,
    load: float,
    load_index: int,
    progress: ProgressWriter,
    check_cancel: Callable[[], None],
    is_last_load: bool,
) -> LoadResult:
    """Run every iteration of one load, writing iteration records; return its result."""
    occupancy = occupancy_cdf(load, config.channels)
    samples: list[float] = []
    for iteration in range(1, config.iterations + 1):
        check_cancel()
        rng = iteration_rng(config.seed, load_index, iteration)
        blocking = simulate_iteration(
            load, config.channels, config.requests, rng, occupancy, check_cancel
        )
        samples.append(blocking)
        progress.write(
            "iteration",
            erlang=load,
            erlang_index=load_index,
            iteration=iteration,
            total_iterations=config.iterations,
            metrics={"blocking_prob": blocking},
        )
        last_of_run = is_last_load and iteration == config.iterations
        if config.pace_seconds > 0 and not last_of_run:
            _pace(config.pace_seconds, check_cancel)
    estimate = summarize(samples)
    return LoadResult(
        erlang=load,
        channels=config.channels,
        iterations=config.iterations,
        requests=config.requests,
        mean_blocking=estimate.mean,
        ci_low=estimate.ci_low,
        ci_high=estimate.ci_high,
        ci_half_width=estimate.half_width,
        exact_blocking=erlang_b(load, config.channels),
    )


def run(
    config: DemoConfig,
    progress: ProgressWriter,
    check_cancel: Callable[[], None],
    out: TextIO,
) -> list[LoadResult]:
    """Simulate every load of `config`, writing progress records and a line per load."""
    loads = config.loads()
    progress.write(
        "start",
        config={
            **config._asdict(),
            "erlangs": loads,
            "total_erlangs": len(loads),
            "total_iterations": config.iterations,
        },
    )
    print(
        f"{PROG}: {len(loads)} loads x {config.iterations} iterations x "
        f"{config.requests} requests, {config.channels} channels, seed {config.seed}",
        file=out,
        flush=True,
    )
    results: list[LoadResult] = []
    for index, load in enumerate(loads):
        progress.write("erlang_start", erlang=load, erlang_index=index, total_erlangs=len(loads))
        started = time.monotonic()
        result = simulate_load(
            config, load, index, progress, check_cancel, is_last_load=index == len(loads) - 1
        )
        results.append(result)
        progress.write(
            "erlang_complete",
            erlang=load,
            erlang_index=index,
            metrics={
                "mean_blocking": result.mean_blocking,
                "ci_low": result.ci_low,
                "ci_high": result.ci_high,
                "ci_half_width": result.ci_half_width,
                "exact_blocking": result.exact_blocking,
            },
        )
        print(
            f"load {load:g} E: blocking {result.mean_blocking:.5f} "
            f"(95% CI {result.ci_low:.5f}..{result.ci_high:.5f}), "
            f"Erlang B {result.exact_blocking:.5f}, {time.monotonic() - started:.2f} s",
            file=out,
            flush=True,
        )
    return results


def results_object(config: DemoConfig, results: Sequence[LoadResult]) -> dict[str, Any]:
    """What results.json holds: the run's settings and one object per load; a run of one load
    also has that load's values at the top level (columns of `runsup results`)."""
    out: dict[str, Any] = {
        "channels": config.channels,
        "iterations": config.iterations,
        "requests": config.requests,
        "seed": config.seed,
        "loads": [r._asdict() for r in results],
    }
    if len(results) == 1:
        out.update(results[0]._asdict())
    return out


def write_results(path: Path, config: DemoConfig, results: Sequence[LoadResult]) -> None:
    """Write results.json atomically: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(results_object(config, results), indent=2) + "\n"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.demo_sim",
        description="erlang-demo: M/M/c/c loss system simulation against Erlang B.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="JSON configuration file (default: all defaults)"
    )
    return parser.parse_args(argv)


def _execute(config_path: Path | None, progress: ProgressWriter, flag: CancelFlag) -> int:
    try:
        config = load_config(config_path)
    except DemoConfigError as exc:
        progress.write("error", message=f"invalid configuration: {exc}")
        print(f"{PROG}: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        started = time.monotonic()
        results = run(config, progress, flag.check, sys.stdout)
        write_results(Path.cwd() / RESULTS_FILE, config, results)
        progress.write("complete", exit_code=EXIT_OK)
        print(
            f"{PROG}: done in {time.monotonic() - started:.2f} s, results in {RESULTS_FILE}",
            flush=True,
        )
        return EXIT_OK
    except Cancelled as exc:
        code = SIGNAL_EXIT_BASE + exc.signum
        progress.write(
            "error", message=str(exc), signal=signal.Signals(exc.signum).name, exit_code=code
        )
        print(f"{PROG}: {exc}; exiting with {code}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    """Run the simulation from the command line; return the exit code."""
    args = _parse_args(argv)
    flag = CancelFlag()
    # Installed before the first record, so a cancel at any point after the
    # daemon sees progress ends with a clean last line.
    previous = {sig: signal.signal(sig, flag.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            progress = ProgressWriter(progress_path())
        except OSError as exc:
            print(f"{PROG}: cannot open the progress file: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        with progress:
            try:
                return _execute(args.config, progress, flag)
            except Exception as exc:
                import traceback  # only needed on this path

                text = traceback.format_exc()
                print(text, file=sys.stderr, end="")
                # If even this fails, the traceback is on stderr, i.e. in the run's log.
                with contextlib.suppress(OSError):
                    progress.write("error", message=f"{type(exc).__name__}: {exc}", traceback=text)
                return EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
