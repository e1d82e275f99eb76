"""`runsup demo`: a self-contained tour of run-supervisor in about fifteen seconds.

What it does, for real and with nothing faked:

1. makes a state directory (a temporary one, removed at the end, unless `--state-dir DIR`)
   and writes a configuration file there pointing the database and the runs at it;
2. starts `runsup daemon` on it as a child process (the same interpreter, `python -m
   supervisor`), in a session of its own so that a Ctrl-C reaches only the demo;
3. submits a few runs of the built-in `erlang-demo` simulation, each sweeping a range of
   offered loads on the same 10-channel loss system, more runs than the daemon may start at
   once so that some wait PENDING;
4. shows them with the `runsup watch` view until they end;
5. reads each run's `results.json` and prints simulated blocking (mean and 95% confidence
   interval) against the exact Erlang B value, per load, and, with the `plot` extra
   (matplotlib), draws the same comparison into a PNG it names (PLOT_FILENAME in the state
   directory it keeps, else in the current directory);
6. stops the daemon (SIGTERM) and waits for it.

Ctrl-C (or SIGTERM, SIGHUP) at any moment asks for a cancel of every demo run, stops the daemon,
which runs with `on_stop = "cancel"`, and waits for it; a second Ctrl-C, or a daemon that does
not stop in time, escalates to SIGKILL. Whatever happened, the demo then kills any process still
carrying its marker variable (RUNSUP_DEMO_TOKEN, inherited by the daemon, the keepers and the
simulations), so it never leaves a process behind. The daemon also gets SIGTERM from the kernel
if the demo itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TextIO

from supervisor.cli.views import table
from supervisor.notify import scrub_environment
from supervisor.settings import SETTINGS_VARIABLES
from supervisor.states import FINAL_STATUSES

if TYPE_CHECKING:
    from supervisor.db import RunRecord

# The runs: (name, first load, last load, step), all on DEMO_CHANNELS channels. Loads around
# the channel count, where blocking goes from rare to common.
DEMO_RUNS: Final = (
    ("light load", 4.0, 6.0, 2.0),
    ("moderate load", 8.0, 10.0, 2.0),
    ("heavy load", 12.0, 14.0, 2.0),
    ("overload", 16.0, 20.0, 4.0),
)
DEMO_CHANNELS: Final = 10
DEMO_ITERATIONS: Final = 10
DEMO_REQUESTS: Final = 20_000
# A pause between iterations, so that a person sees the bars move: 20 iterations a run make
# about 6 s of a run's life; with 2 runs at a time the demo's runs take about 13 s.
DEMO_PACE_SECONDS: Final = 0.3
DEMO_MAX_CONCURRENT: Final = 2
DEMO_CANCEL_GRACE_SECONDS: Final = 2.0
DEMO_TEMPLATE: Final = "erlang-demo"

# How often the watch view reads the database again.
WATCH_INTERVAL_SECONDS: Final = 0.25
# Limits: the daemon must serve this soon, the runs end this soon, the daemon stop this soon.
DAEMON_READY_TIMEOUT_SECONDS: Final = 20.0
RUNS_TIMEOUT_SECONDS: Final = 120.0
DAEMON_STOP_TIMEOUT_SECONDS: Final = DEMO_CANCEL_GRACE_SECONDS + 8.0
# After a Ctrl-C, how long the daemon may take to settle the cancels before it gets SIGTERM.
CANCEL_SETTLE_TIMEOUT_SECONDS: Final = DEMO_CANCEL_GRACE_SECONDS + 3.0
SWEEP_TIMEOUT_SECONDS: Final = 5.0
POLL_SECONDS: Final = 0.05
# The line the daemon logs when it serves (an event name, stable by design).
DAEMON_READY_EVENT: Final = b"daemon_ready"
DAEMON_LOG_TAIL_LINES: Final = 15

CONFIG_FILENAME: Final = "demo-config.toml"
DAEMON_LOG_FILENAME: Final = "daemon.log"
RESULTS_FILENAME: Final = "results.json"
# The picture of simulated blocking against the Erlang B curve (with matplotlib).
PLOT_FILENAME: Final = "erlang-b.png"
TEMPORARY_PLOT_FILENAME: Final = "runsup-demo-erlang-b.png"  # when the state dir goes away
MARKER_VARIABLE: Final = "RUNSUP_DEMO_TOKEN"
HANDLED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG: Final = 1

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


class DemoError(Exception):
    """Something kept the demo from finishing; the message says what."""


@dataclass(frozen=True)
class LoadRow:
    """One line of the results table."""

    load: float
    mean: float
    ci_low: float
    ci_high: float
    exact: float

    @property
    def within(self) -> bool:
        """True when the exact value lies in the simulated confidence interval."""
        return self.ci_low <= self.exact <= self.ci_high


def demo_configs() -> list[tuple[str, dict[str, Any]]]:
    """The (name, config_json) of each demo run."""
    return [
        (
            name,
            {
                "channels": DEMO_CHANNELS,
                "erlang_start": start,
                "erlang_stop": stop,
                "erlang_step": step,
                "iterations": DEMO_ITERATIONS,
                "requests": DEMO_REQUESTS,
                "seed": seed,
                "pace_seconds": DEMO_PACE_SECONDS,
            },
        )
        for seed, (name, start, stop, step) in enumerate(DEMO_RUNS, start=1)
    ]


def read_results(run_dir: Path) -> list[LoadRow]:
    """The rows of one run's results.json (written by the erlang-demo simulation)."""
    path = run_dir / RESULTS_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["loads"]
        return [
            LoadRow(
                load=float(item["erlang"]),
                mean=float(item["mean_blocking"]),
                ci_low=float(item["ci_low"]),
                ci_high=float(item["ci_high"]),
                exact=float(item["exact_blocking"]),
            )
            for item in data
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DemoError(f"cannot read {path}: {exc}") from None


def results_table(rows: Sequence[LoadRow]) -> str:
    """Simulated against exact blocking, one line per load, and a closing verdict."""
    body = [
        [
            f"{r.load:g}",
            f"{r.mean:.5f}",
            f"{r.ci_low:.5f} .. {r.ci_high:.5f}",
            f"{r.exact:.5f}",
            f"{(r.mean - r.exact) / r.exact:+.1%}" if r.exact else "-",
            "yes" if r.within else "NO",
        ]
        for r in sorted(rows, key=lambda r: r.load)
    ]
    text = table(
        ["LOAD (E)", "SIMULATED", "95% CI", "ERLANG B", "DIFF", "B IN CI"],
        body,
    )
    inside = sum(1 for r in rows if r.within)
    return (
        f"{text}\n\nThe exact Erlang B value lies within the simulated 95% confidence "
        f"interval\nfor {inside} of {len(rows)} loads."
    )


# ---------------------------------------------------------------- signals


class _Signals:
    """Records SIGINT/SIGTERM/SIGHUP; the demo's loops look at it (nothing raises mid-work)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum

    @property
    def stop(self) -> bool:
        return self.count > 0

    @property
    def hurry(self) -> bool:
        """A second signal: stop waiting politely."""
        return self.count > 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in HANDLED_SIGNALS}
        try:
            yield self
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)


# ----------------------------------------------------------------- the demo


class _Text:
    """Where the tour's words go: stdout, or stderr when stdout carries `--json`'s document."""

    stream: TextIO = sys.stdout


def _say(text: str = "") -> None:
    _Text.stream.write(text + "\n")
    _Text.stream.flush()


def _set_parent_death_signal() -> None:
    """In the daemon's child before exec: SIGTERM it if the demo dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def daemon_environment(environ: Mapping[str, str], token: str) -> dict[str, str]:
    """The demo daemon's environment: nothing that points it at another configuration or
    database, nor lets it speak for a service that started this command; with its marker."""
    env = scrub_environment(environ)
    for name in SETTINGS_VARIABLES:
        env.pop(name, None)
    env[MARKER_VARIABLE] = token
    return env


class Demo:
    """One demo: a state directory, a daemon, the runs, the results."""

    def __init__(self, root: Path, signals: _Signals, plot_path: Path | None = None) -> None:
        self.root = root
        self.plot_path = plot_path if plot_path is not None else root / PLOT_FILENAME
        self.signals = signals
        self.token = secrets.token_hex(8)
        self.config_path = root / CONFIG_FILENAME
        self.db_path = root / "runs.db"
        self.runs_dir = root / "runs"
        self.log_path = root / DAEMON_LOG_FILENAME
        self.daemon: subprocess.Popen[bytes] | None = None
        self.run_ids: list[str] = []
        self.results: dict[str, Any] | None = None  # for --json, once the runs completed

    # -- setup --------------------------------------------------------------

    def write_config(self) -> None:
        lines = [
            "# Written by `runsup demo`.",
            f"database = {json.dumps(str(self.db_path))}",
            f"runs_dir = {json.dumps(str(self.runs_dir))}",
            f"max_concurrent_runs = {DEMO_MAX_CONCURRENT}",
            f"cancel_grace_seconds = {DEMO_CANCEL_GRACE_SECONDS}",
            'on_stop = "cancel"',
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start_daemon(self) -> None:
        env = daemon_environment(os.environ, self.token)
        argv = [sys.executable, "-m", "supervisor", "--config", str(self.config_path), "daemon"]
        with self.log_path.open("ab") as log:
            self.daemon = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )
        deadline = time.monotonic() + DAEMON_READY_TIMEOUT_SECONDS
        while not self._daemon_logged(DAEMON_READY_EVENT):
            if self.daemon.poll() is not None:
                raise DemoError(f"the daemon exited with {self.daemon.returncode}")
            if time.monotonic() > deadline:
                raise DemoError(f"the daemon did not serve within {DAEMON_READY_TIMEOUT_SECONDS} s")
            if self.signals.stop:
                return
            time.sleep(POLL_SECONDS)

    def _daemon_logged(self, event: bytes) -> bool:
        try:
            return event in self.log_path.read_bytes()
        except OSError:
            return False

    def daemon_alive(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def daemon_log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no daemon log)"
        return "\n".join(lines[-DAEMON_LOG_TAIL_LINES:])

    # -- the tour -----------------------------------------------------------

    def run(self) -> int:
        from supervisor.cli.watchview import EXIT_STOPPED, watch_runs
        from supervisor.db import Store

        started = time.monotonic()
        self.write_config()
        store = Store.open(f"sqlite:///{self.db_path}")
        try:
            self.start_daemon()
            if self.signals.stop:
                return self.interrupted()
            assert self.daemon is not None
            _say(
                f"daemon:  pid {self.daemon.pid}, at most {DEMO_MAX_CONCURRENT} runs at a time, "
                f"log in {self.log_path.name}"
            )
            for name, config in demo_configs():
                self.run_ids.append(store.submit(DEMO_TEMPLATE, json.dumps(config), name).id)
            _say(
                f"runs:    {len(self.run_ids)} of the {DEMO_TEMPLATE} simulation, a loss system "
                f"with {DEMO_CHANNELS} channels,\n"
                f"         {DEMO_ITERATIONS} iterations of {DEMO_REQUESTS} calls per offered load"
            )
            _say()
            deadline = time.monotonic() + RUNS_TIMEOUT_SECONDS
            header = (
                f"{len(self.run_ids)} {DEMO_TEMPLATE} runs (Ctrl-C cancels them and ends the demo)"
            )
            code = watch_runs(
                store,
                None,
                run_ids=self.run_ids,
                interval=WATCH_INTERVAL_SECONDS,
                keep_going=lambda: (
                    not self.signals.stop and self.daemon_alive() and time.monotonic() < deadline
                ),
                header=header,
                out=_Text.stream,
            )
            if code == EXIT_STOPPED:
                if self.signals.stop:
                    return self.interrupted()
                if not self.daemon_alive():
                    raise DemoError("the daemon stopped before the runs ended")
                raise DemoError(f"the runs did not end within {RUNS_TIMEOUT_SECONDS:g} s")
            records = store.get_many(self.run_ids)
            code = self.report(records)
            self.stop_daemon()
            _say(f"\ndaemon stopped; the demo took {time.monotonic() - started:.1f} s.")
            return code
        finally:
            store.close()

    def report(self, records: Sequence[RunRecord]) -> int:
        from supervisor.cli.views import exit_reason

        failed = [r for r in records if r.status != "COMPLETED"]
        if failed:
            _say()
            for r in failed:
                _say(f"run {r.id} ({r.name}) {r.status}: {exit_reason(r)}")
                if r.error_message:
                    _say("    " + r.error_message.replace("\n", "\n    "))
            raise DemoError(f"{len(failed)} of {len(records)} runs did not complete")
        rows: list[LoadRow] = []
        for r in records:
            rows += read_results(Path(r.run_dir) if r.run_dir else self.runs_dir / r.id)
        _say()
        _say(
            f"Blocking probability with {DEMO_CHANNELS} channels: simulated (mean and 95% "
            f"confidence\ninterval over {DEMO_ITERATIONS} iterations) against the exact "
            "Erlang B formula"
        )
        _say()
        _say(results_table(rows))
        self.draw(rows)
        self.results = {
            "runs": [r.to_json() for r in records],
            "results": [{**asdict(row), "within": row.within} for row in rows],
        }
        return EXIT_OK

    def draw(self, rows: Sequence[LoadRow]) -> Path | None:
        """The comparison as a picture, through the same plotting code as `runsup results
        --plot`; says where it went, or how to get it (never fails the demo)."""
        from supervisor.demo_sim import erlang_b
        from supervisor.errors import SupervisorError
        from supervisor.plot import INSTALL_HINT, BlockingPoint, PlotUnavailable, plot_erlang_b

        points = [BlockingPoint(r.load, r.mean, r.ci_low, r.ci_high) for r in rows]
        try:
            path = plot_erlang_b(points, DEMO_CHANNELS, erlang_b, self.plot_path)
        except PlotUnavailable:
            _say(f"\n(With matplotlib this is also drawn as a picture: {INSTALL_HINT})")
            return None
        except SupervisorError as exc:
            _say(f"\n(The picture was not drawn: {exc})")
            return None
        _say(f"\npicture: {path}")
        return path

    def interrupted(self) -> int:
        signum = self.signals.first or signal.SIGINT
        _say(f"\n{signal.Signals(signum).name}: cancelling the runs and stopping the daemon ...")
        self.stop_daemon(cancel=True)
        counts = self._status_counts()
        if counts:
            _say("runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        return 128 + signum

    # -- teardown -----------------------------------------------------------

    def stop_daemon(self, *, cancel: bool = False) -> None:
        """Stop the daemon (SIGTERM) and wait for it; with `cancel`, cancel the runs first.

        The cancels go through the database, as any program's would, and the daemon gets a
        moment to settle them (so that no run is left PENDING); on_stop = "cancel" covers
        whatever it has not settled when the SIGTERM comes.
        """
        proc = self.daemon
        if cancel and self._request_cancels() and proc is not None:
            deadline = time.monotonic() + CANCEL_SETTLE_TIMEOUT_SECONDS
            while proc.poll() is None and not self.signals.hurry:
                counts = self._status_counts()
                if time.monotonic() > deadline or not (counts.keys() - FINAL_STATUSES):
                    break
                time.sleep(POLL_SECONDS)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DAEMON_STOP_TIMEOUT_SECONDS
        while proc.poll() is None:
            if time.monotonic() > deadline or self.signals.hurry:
                reason = "second signal" if self.signals.hurry else "timeout"
                _say(f"the daemon did not stop ({reason}): killing it")
                proc.kill()
                proc.wait()
                break
            time.sleep(POLL_SECONDS)

    @contextlib.contextmanager
    def _store(self) -> Iterator[Any]:
        """A short-lived store for teardown (the main one may be mid-transaction)."""
        from supervisor.db import Store

        store = Store.open(f"sqlite:///{self.db_path}", upgrade=False)
        try:
            yield store
        finally:
            store.close()

    def _request_cancels(self) -> bool:
        """Ask for a cancel of every demo run; False when the database cannot be reached."""
        if not self.run_ids:
            return False
        try:
            with self._store() as store:
                for run_id in self.run_ids:
                    store.request_cancel(run_id)
        except Exception:  # the database is gone or broken: the sweep still comes
            return False
        return True

    def _status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        try:
            with self._store() as store:
                for record in store.get_many(self.run_ids):
                    counts[record.status] = counts.get(record.status, 0) + 1
        except Exception:
            return {}
        return counts

    def sweep(self) -> tuple[int, int]:
        """Kill every process still carrying this demo's marker: (how many, how many survived)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        found = _marked_processes(self.token)
        for proc in found:
            with contextlib.suppress(Exception):
                proc.kill()
        left = found
        deadline = time.monotonic() + SWEEP_TIMEOUT_SECONDS
        while left and time.monotonic() < deadline:
            left = [p for p in left if _alive(p)]
            time.sleep(POLL_SECONDS)
        return len(found), len(left)


def _marked_processes(token: str) -> list[Any]:
    import psutil

    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER_VARIABLE) == token:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@contextlib.contextmanager
def _state_dir(given: str | None) -> Iterator[tuple[Path, bool]]:
    """The demo's directory and whether it is temporary (removed on the way out)."""
    if given is not None:
        path = Path(given).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path, False
        return
    path = Path(tempfile.mkdtemp(prefix="runsup-demo-"))
    try:
        yield path, True
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _command_name() -> str:
    """How the user called us: `runsup`, `.venv/bin/runsup` or `python -m supervisor`."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "runsup":
        return argv0
    return f"{sys.executable} -m supervisor"


def run_demo(state_dir: str | None, config_file: str | None, as_json: bool = False) -> int:
    """Run the demo; the exit code (0 when every run completed and the table was printed).

    `as_json`: the tour goes to stderr and stdout gets one JSON object, the runs and the
    results table's rows.
    """
    if as_json:
        _Text.stream = sys.stderr
    if config_file is not None:
        sys.stderr.write(
            f"runsup demo: not using {config_file}: the demo brings its own configuration, "
            "database and runs directory\n"
        )
    signals = _Signals()
    with signals.installed(), _state_dir(state_dir) as (root, temporary):
        kept = "removed at the end; keep it with --state-dir DIR" if temporary else "kept"
        _say("run-supervisor demo")
        _say(f"state:   {root}\n         ({kept})")
        plot_path = Path.cwd() / TEMPORARY_PLOT_FILENAME if temporary else root / PLOT_FILENAME
        demo = Demo(root, signals, plot_path)
        code = EXIT_FAILED
        try:
            code = demo.run()
        except DemoError as exc:
            sys.stderr.write(f"runsup demo: {exc}\n")
            if demo.daemon is not None:
                sys.stderr.write(f"the daemon's last log lines:\n{demo.daemon_log_tail()}\n")
            demo.stop_daemon(cancel=True)
            code = EXIT_FAILED
        finally:
            killed, left = demo.sweep()
            if killed:
                sys.stderr.write(f"runsup demo: killed {killed} leftover processes\n")
            if left:
                sys.stderr.write(f"runsup demo: {left} processes would not die\n")
        if as_json and demo.results is not None:
            sys.stdout.write(json.dumps(demo.results, indent=2, sort_keys=True) + "\n")
        if code == EXIT_OK and not temporary:
            me = _command_name()
            _say(
                f"\nThe runs are kept. Look around with:\n"
                f"  {me} --config {demo.config_path} list\n"
                f"  {me} --config {demo.config_path} show {demo.run_ids[0]}\n"
                f"  {me} --config {demo.config_path} logs {demo.run_ids[0]}"
            )
        return code
