"""The seam between the loop and the places runs run: what every executor offers."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from supervisor.signames import signal_name


@dataclass(frozen=True)
class ExitStatus:
    """How the simulation ended; both None means nobody recorded it (the keeper was killed)."""

    exit_code: int | None
    exit_signal: int | None
    # Measured where the executor can (a memory cgroup, the cluster's accounting):
    peak_memory_bytes: int | None = None
    out_of_memory: bool = False  # killed for passing its memory cap
    # A cluster's own verdict when it ended the run (SPEC section 9): "timeout" (time limit),
    # "node_failure", or "vanished" (no record of the job anywhere).
    verdict: str | None = None

    @property
    def known(self) -> bool:
        """False for the 'exit status unknown' value."""
        return self.exit_code is not None or self.exit_signal is not None

    def describe(self) -> str:
        """In words: "exit code 3", "killed by SIGTERM" or "exit status unknown"."""
        if self.exit_signal is not None:
            return f"killed by {signal_name(self.exit_signal)}"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "exit status unknown"


UNKNOWN_EXIT = ExitStatus(None, None)


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as it can be recognised later: pid, start time (ticks since boot), boot."""

    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat; exact, and unchanged by exec
    boot_id: str


@dataclass(frozen=True)
class ProcessRecord:
    """What the database keeps so that a restarted daemon can find the run again."""

    pid: int
    pgid: int
    start_ticks: int
    boot_id: str
    keeper_pid: int
    keeper_start_ticks: int
    # A run on a cluster: the job's id and the node it runs on (the process is its stand-in).
    external_id: str | None = None
    host: str | None = None

    @property
    def sim_identity(self) -> ProcessIdentity:
        """The simulation (leader of the run's group) as an identity."""
        return ProcessIdentity(self.pid, self.start_ticks, self.boot_id)

    @property
    def keeper_identity(self) -> ProcessIdentity:
        """The keeper as an identity."""
        return ProcessIdentity(self.keeper_pid, self.keeper_start_ticks, self.boot_id)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one run."""

    run_id: str
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    record_dir: Path
    # What the run asked for and was granted (SPEC section 10); a cluster passes them on.
    cpus: int = 1
    gpu_ids: tuple[str, ...] | None = None  # None: GPUs not managed
    memory_max: int | None = None  # bytes: a hard cap on the run's processes
    cpu_ids: tuple[int, ...] | None = None  # pin the run to these CPUs
    timeout_seconds: float | None = None
    gpus: int | None = None  # how many GPUs the template asks for (a cluster requests them)
    attempt: int = 1  # the run's attempt this launch is (SPEC section 11)
    # When the attempt was claimed: a cluster looks for its job by name only among jobs
    # submitted since (a job of an earlier claim or attempt is never taken for this one).
    claimed_at: datetime | None = None
    # SPEC section 15: this signal (a name without SIG, e.g. "USR1") `checkpoint_seconds`
    # before the attempt's time limit; an executor whose jobs send it themselves passes it on.
    checkpoint_signal: str | None = None
    checkpoint_seconds: float | None = None


class RunHandle(Protocol):
    """A started run as the loop sees it, whatever runs it."""

    record: ProcessRecord

    def fileno(self) -> int | None:
        """Readable once the run has ended, for selectors; None: only Executor.poll tells."""
        ...

    def exit_status(self) -> ExitStatus | None:
        """None while running; then the recorded status (both fields None: unknown)."""
        ...

    def signal_group(self, sig: int) -> bool:
        """Signal the run's process group if it is verifiably the run's; False if it is gone."""
        ...

    def group_alive(self) -> bool:
        """True while any live process is left in the run's group."""
        ...

    def leftover_fileno(self) -> int | None:
        """After group_alive() said True: readable when the process it found ends; None if the
        executor cannot tell (the loop then looks again on a timer)."""
        ...

    def group_check_delay(self) -> float:
        """After group_alive() said True: seconds until the group is worth another look (the
        handle's backoff: it grows while the group lingers, and starts again after a SIGKILL)."""
        ...

    def release(self) -> None:
        """The run is settled: give back what it held outside this process (its cgroup)."""
        ...

    def close(self) -> None:
        """Release what the handle holds (file descriptors); idempotent."""
        ...


class Launch(Protocol):
    """A launch in flight: begun without waiting, finished once the executor reports back.

    On a cluster a launch lasts while the job is queued: `external_id` is set as soon as the
    job exists (the loop records it in the row before relying on it), and poll() returns the
    handle once the job runs.
    """

    run_id: str
    deadline: float  # monotonic: poll() must be called by then at the latest
    external_id: str | None

    def fileno(self) -> int | None:
        """Readable when poll() may make progress; None: poll at the deadline or on a timer."""
        ...

    def poll(self) -> RunHandle | None:
        """The started run, or None while still starting; raises LaunchError if it failed."""
        ...

    def abandon(self) -> None:
        """Stop waiting for the report (the loop is exiting); the run is found again later."""
        ...

    def cancel(self) -> bool:
        """A cancel while it is still starting: True if the run will never start (a queued job
        removed); False if it cannot be stopped before it starts (then cancel the run)."""
        ...


# -- what looking for a run after a restart can find: one case each ------------------------------


@dataclass(frozen=True)
class RunRef:
    """What the row tells of a run an earlier daemon was responsible for."""

    run_id: str
    record_dir: Path
    process: ProcessRecord | None  # the identity stored in the row, if complete
    claimed: bool = False  # PENDING with a launch claim: it may or may not have started
    external_id: str | None = None  # a cluster job's id, once recorded
    host: str | None = None
    attempt: int = 1  # the row's attempt
    claimed_at: datetime | None = None  # the launch claim's time (a claim only)


@dataclass(frozen=True)
class Adopted:
    """The run is still going: watch it."""

    handle: RunHandle


@dataclass(frozen=True)
class EndedWhileAway:
    """The run ended while nobody watched and its exit status was kept; `leftover` watches
    what is left of its group (stopped, then settled with `exit`)."""

    exit: ExitStatus
    record: ProcessRecord | None  # its process, when the row never got it (a claim)
    leftover: RunHandle | None = None


@dataclass(frozen=True)
class Queued:
    """Submitted and still waiting to start (a cluster job): the launch goes on."""

    launch: Launch


@dataclass(frozen=True)
class StillStarting:
    """A launch is still under way (its keeper has not reported yet): look again later."""

    why: str


@dataclass(frozen=True)
class NeverStarted:
    """Provably nothing was started: launching it again cannot start it twice."""

    why: str


@dataclass(frozen=True)
class FailedToStart:
    """The launch ran and failed before the simulation could start."""

    why: str


@dataclass(frozen=True)
class Lost:
    """How the run ended cannot be known; `leftover` watches what may be left of its group."""

    why: str
    record: ProcessRecord | None
    leftover: RunHandle | None = None


Recovery = Adopted | EndedWhileAway | Queued | StillStarting | NeverStarted | FailedToStart | Lost


class Executor(Protocol):
    """Where runs run: starts them, looks at them, finds them again after a restart."""

    name: str
    # True when the executor's runs get `checkpoint_signal` from where they run (a cluster
    # job's own --signal): the loop then sends none itself.
    signals_checkpoints: bool

    @property
    def poll_interval(self) -> float | None:
        """Seconds between two batched looks at its runs (poll()); None: the handles' fds tell
        (read at every pass: it may change, as runs that only a timer can watch come and go)."""
        ...

    # Where its runs' directories are (None: the daemon's runs_dir) and how many of its runs
    # may be launched or running at once (None: the daemon's local limits apply).
    runs_dir: Path | None
    max_in_flight: int | None

    def begin_launch(self, spec: LaunchSpec) -> Launch:
        """Start starting a run without waiting; LaunchError for what is wrong before starting."""
        ...

    def poll(self) -> Collection[str]:
        """Never waits: starts a batched look at all its runs when one is due (one query for all,
        not one each) and returns the run ids whose launch or handle has news since last time."""
        ...

    def recover(self, ref: RunRef) -> Recovery:
        """Find a run again (ref.process None: the daemon died mid-launch, look at the files)."""
        ...

    def close(self) -> None:
        """The loop is exiting: stop what the executor runs of its own (threads); runs go on."""
        ...

    def adopt_foreign(
        self,
        run_id: str,
        *,
        pid: int | None,
        pgid: int | None,
        started_at: datetime | None,
        start_ticks: int | None,
        record_dir: Path,
    ) -> RunHandle | None:
        """A handle on a RUNNING row another program started (SPEC section 3), or None if
        nothing of its process group lives (or the executor cannot see it)."""
        ...
