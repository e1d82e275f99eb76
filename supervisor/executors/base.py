"""The seam between the loop and the places runs run: what every executor offers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ExitStatus:
    """How the simulation ended; both None means nobody recorded it (the keeper was killed)."""

    exit_code: int | None
    exit_signal: int | None

    @property
    def known(self) -> bool:
        """False for the 'exit status unknown' value."""
        return self.exit_code is not None or self.exit_signal is not None


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


class RunHandle(Protocol):
    """A started run as the daemon loop sees it, whatever runs it."""

    record: ProcessRecord

    def fileno(self) -> int:
        """Readable once the run's keeper (hence the simulation) has ended; for selectors."""
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

    def close(self) -> None:
        """Release what the handle holds (file descriptors); idempotent."""
        ...


@dataclass(frozen=True)
class Recovered:
    """The outcome of looking for a run after a restart.

    `handle` set: something of the run may still be alive. Without `lost` it is the adopted,
    running run. With `lost` (the keeper was killed) its exit_status() is UNKNOWN_EXIT at once
    and it serves to stop and watch what is left of the group.
    `exit` set: the run ended while nobody watched and the keeper recorded how.
    `lost` set: why the status cannot be known, in words. `never_started` tells the one case
    in which launching again is safe (no simulation was ever started from `record_dir`).
    """

    handle: RunHandle | None = None
    exit: ExitStatus | None = None
    lost: str | None = None
    record: ProcessRecord | None = None
    never_started: bool = False


class Backend(Protocol):
    """Starts runs and finds them again; the daemon loop knows nothing else about processes."""

    def launch(self, spec: LaunchSpec) -> RunHandle:
        """Start a run; raises LaunchError with words a person can act on."""
        ...

    def recover(
        self, record_dir: Path, record: ProcessRecord | None, *, run_id: str | None = None
    ) -> Recovered:
        """Find a run again (record None: the daemon died mid-launch, look at the files).

        `run_id` only labels log lines.
        """
        ...
