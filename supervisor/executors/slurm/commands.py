"""The Slurm commands the cluster executor uses: submit, query, find by name, cancel.

Every call is one client program (sbatch, squeue, sacct, scancel) run with an argument list,
never a shell, and a timeout; its stderr goes into the exception's message. A controller that
does not answer in time, or any error other than "Invalid job id", raises `SlurmError`: the
caller must read that as "state unknown", never as "the job finished". `SlurmCommands.calls`
counts the calls by program, so a benchmark can check that the number of queries does not grow
with the number of jobs: `query` asks about any number of jobs with one squeue call (plus, when
accounting works, one sacct call for the ids squeue no longer lists or lists as ended).

The calls block (up to `timeout`): run them off the daemon's main loop. Counting is
thread-safe, and so is everything else here (each call is its own process).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from supervisor.errors import SupervisorError
from supervisor.executors.slurm.parsing import (
    SACCT_FORMAT,
    SQUEUE_FORMAT,
    JobInfo,
    SubmitRequest,
    merge_accounting,
    parse_job_names,
    parse_sacct,
    parse_squeue,
    parse_submitted_id,
    purged_job,
    sbatch_argv,
    submit_error_is_final,
    unknown_ids,
)

log = structlog.get_logger(__name__)

# One client command; Slurm's own MessageTimeout is 10 s, and a dead controller makes a
# client retry for ~9 s before it gives up: this is the bound above that.
COMMAND_TIMEOUT_SECONDS = 30.0
# How much of a command's stderr an exception quotes.
STDERR_QUOTE_CHARS = 500
# squeue / scontrol for an id slurmctld no longer holds (a purged record).
INVALID_JOB_ID = "Invalid job id specified"
# sacct on a cluster without slurmdbd.
ACCOUNTING_DISABLED = "accounting storage is disabled"
# Variables of the daemon that would change what sbatch / squeue do if passed on.
_CLIENT_VARIABLE_PREFIXES = ("SBATCH_", "SQUEUE_", "SACCT_", "SCANCEL_", "SLURM_")
_CLIENT_VARIABLES_KEPT = frozenset({"SLURM_CONF"})
# How far back sacct looks for a job by name (its own default is today's midnight, which a
# daemon down across midnight would miss).
NAME_LOOKBACK = "now-7days"
# The ids and names given to one squeue/sacct call; the command line stays well below the
# kernel's limit (5000 names of 19 characters are under 100 kB).
IDS_PER_CALL = 5000


class SlurmError(SupervisorError):
    """A Slurm command failed or did not answer: what it was asked is unknown."""


class SlurmTimeout(SlurmError):
    """A Slurm command did not answer within its timeout (the controller may be down)."""


class SubmitRejected(SlurmError):
    """sbatch refused the job (bad partition, account, request): no job was created."""


def _earliest(since: datetime | Mapping[str, datetime] | None, names: Sequence[str]) -> str:
    """sacct's -S for a name search: the earliest bound among `names` (NAME_LOOKBACK without)."""
    if isinstance(since, Mapping):
        bounds = [since[n] for n in names if n in since]
        if len(bounds) < len(names):
            return NAME_LOOKBACK
        return sacct_time(min(bounds))
    return NAME_LOOKBACK if since is None else sacct_time(since)


def sacct_time(moment: datetime) -> str:
    """A moment as sacct's -S wants it: local time, to the second (naive means local)."""
    local = moment.astimezone() if moment.tzinfo else moment
    return local.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class Programs:
    """Where the client programs are (names are looked up on PATH when run)."""

    sbatch: str = "sbatch"
    squeue: str = "squeue"
    sacct: str = "sacct"
    scancel: str = "scancel"


def client_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) without the variables that steer Slurm's clients, except
    SLURM_CONF: a daemon started from inside a job must not submit into that job's context."""
    source = os.environ if base is None else base
    return {
        k: v
        for k, v in source.items()
        if k in _CLIENT_VARIABLES_KEPT or not k.startswith(_CLIENT_VARIABLE_PREFIXES)
    }


@dataclass
class SlurmCommands:
    """Runs Slurm's client programs against one cluster and counts the calls."""

    env: dict[str, str] = field(default_factory=client_env)
    timeout: float = COMMAND_TIMEOUT_SECONDS
    programs: Programs = field(default_factory=Programs)
    calls: Counter[str] = field(default_factory=Counter)
    # None until first needed; True/False once sacct has answered (see `accounting`).
    _accounting: bool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total_calls(self) -> int:
        """Every client command run so far."""
        return sum(self.calls.values())

    # -- running one command ---------------------------------------------------------------

    def _run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        program = argv[0]
        name = os.path.basename(program)
        with self._lock:
            self.calls[name] += 1
        resolved = shutil.which(program, path=(env or self.env).get("PATH")) or program
        started = time.monotonic()
        try:
            result = subprocess.run(
                [resolved, *argv[1:]],
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=dict(env or self.env),
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("slurm_command_timeout", command=name, timeout=self.timeout)
            raise SlurmTimeout(f"{name} did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise SlurmError(f"{name} could not be run: {exc}") from None
        log.debug(
            "slurm_command",
            command=name,
            rc=result.returncode,
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    @staticmethod
    def _failure(result: subprocess.CompletedProcess[str], what: str) -> str:
        stderr = result.stderr.strip()[-STDERR_QUOTE_CHARS:] or "(no message)"
        return f"{what} failed (rc {result.returncode}): {stderr}"

    # -- submit ----------------------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> str:
        """Submit one batch job; return its id. SubmitRejected if sbatch refused it; any other
        SlurmError leaves open whether the job exists (look for it with `find_by_name`)."""
        env = dict(self.env)
        if request.env is not None:
            env.update(request.env)  # --export names them; sbatch passes on these values
        argv = [self.programs.sbatch, *sbatch_argv(request)]
        # A job whose output directory is missing fails at launch (JobLaunchFailure, 0:53).
        try:
            request.output_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SubmitRejected(f"cannot create the job's log directory: {exc}") from None
        result = self._run(argv, stdin=request.script, env=env)
        if result.returncode != 0:
            message = self._failure(result, "sbatch")
            if submit_error_is_final(result.stderr):
                raise SubmitRejected(message)
            raise SlurmError(message)
        try:
            job_id = parse_submitted_id(result.stdout)
        except ValueError as exc:
            raise SlurmError(str(exc)) from None
        log.info("slurm_job_submitted", run_id=request.run_id, job_id=job_id)
        return job_id

    # -- query -----------------------------------------------------------------------------

    def query(self, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """The state of every job in `job_ids` in one squeue call, plus, when accounting
        works, one sacct call for the ids squeue no longer lists and those it lists as ended
        (for their MaxRSS). Ids no source knows come back `purged`. SlurmError: the answer
        is unknown for all of them."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        if len(wanted) > IDS_PER_CALL:
            raise ValueError(f"at most {IDS_PER_CALL} job ids per query, not {len(wanted)}")
        found = self._squeue(wanted)
        missing = unknown_ids(wanted, found)
        ended = [job_id for job_id, info in found.items() if info.final]
        if (missing or ended) and self.accounting():
            found = merge_accounting(found, self._sacct(missing + ended))
            missing = unknown_ids(missing, found)
        for job_id in missing:
            found[job_id] = purged_job(job_id)
        return {job_id: found[job_id] for job_id in wanted}

    def _squeue(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        argv = [self.programs.squeue, "-h", "-t", "all", "-j", ",".join(job_ids)]
        result = self._run([*argv, "-O", SQUEUE_FORMAT])
        if result.returncode != 0:
            # One unknown id alone is an error; among several, unknown ones are left out.
            if INVALID_JOB_ID in result.stderr:
                return {}
            raise SlurmError(self._failure(result, "squeue"))
        wanted = set(job_ids)
        return {k: v for k, v in parse_squeue(result.stdout).items() if k in wanted}

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        # With -j and no -S, sacct searches from the epoch, not from today's midnight.
        argv = [self.programs.sacct, "-n", "-P", "-j", ",".join(job_ids), "-o", SACCT_FORMAT]
        result = self._run(argv)
        if result.returncode != 0:
            raise SlurmError(self._failure(result, "sacct"))
        return parse_sacct(result.stdout)

    def accounting(self) -> bool:
        """True when sacct works on this cluster (asked once, then remembered).

        SlurmError when sacct fails for another reason (slurmdbd down): unknown, ask again.
        """
        if self._accounting is None:
            result = self._run([self.programs.sacct, "-n", "-P", "-X", "-j", "1", "-o", "JobID"])
            if result.returncode == 0:
                self._accounting = True
            elif ACCOUNTING_DISABLED in result.stderr:
                self._accounting = False
            else:
                raise SlurmError(self._failure(result, "sacct"))
            log.info("slurm_accounting_detected", accounting=self._accounting)
        return self._accounting

    # -- find by name ----------------------------------------------------------------------

    def find_by_name(
        self, names: Iterable[str], *, since: datetime | Mapping[str, datetime] | None = None
    ) -> dict[str, str]:
        """{job name: newest job id of ours with that name} for the names the cluster knows,
        among jobs submitted at or after `since` (an attempt's claim: a job of an earlier claim
        is never taken for this one), in one squeue call plus, when accounting works, one
        sacct call for the names squeue no longer lists (default: NAME_LOOKBACK ago)."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        if len(wanted) > IDS_PER_CALL:
            raise ValueError(f"at most {IDS_PER_CALL} names per call, not {len(wanted)}")
        joined = ",".join(wanted)
        argv = [self.programs.squeue, "-h", "--me", "-t", "all", "-n", joined, "-o", "%i|%V|%j"]
        result = self._run(argv)
        if result.returncode != 0:
            raise SlurmError(self._failure(result, "squeue"))
        listed = parse_job_names(result.stdout, since)
        found = {k: v for k, v in listed.items() if k in wanted}
        rest = [name for name in wanted if name not in found]
        if rest and self.accounting():
            argv = [self.programs.sacct, "-n", "-P", "-X", "--name", ",".join(rest)]
            start = _earliest(since, rest)
            argv += ["-o", "JobID,Submit,JobName", "-S", start]
            result = self._run(argv)
            if result.returncode != 0:
                raise SlurmError(self._failure(result, "sacct"))
            accounted = parse_job_names(result.stdout, since)
            found.update({k: v for k, v in accounted.items() if k in rest})
        return found

    def state_of(self, job_id: str) -> JobInfo:
        """One job's state now (squeue, then sacct): for a decision that must not rest on the
        last batched query (a cancel of a job that may have just started). SlurmError: unknown."""
        return self.query([job_id])[job_id]

    # -- cancel ----------------------------------------------------------------------------

    def cancel(
        self,
        job_id: str,
        sig: signal.Signals | None = None,
        *,
        full: bool = True,
        only_pending: bool = False,
        only_running: bool = False,
    ) -> None:
        """Cancel a job (plain scancel: a queued job leaves the queue, a running one gets
        SIGTERM, then SIGKILL after KillWait), or with `sig` send that signal to it: with
        `full`, to the batch script and all its children too, which a batch-only job needs
        (without --full, scancel signals job steps only). A job already ended is no error.
        Never send a signal to a job still queued: scancel retries "Job can not be altered
        now" until it gives up or times out; cancel a queued job plainly. `only_pending` /
        `only_running`: act only on a job in that state (scancel filters by the state)."""
        argv = [self.programs.scancel]
        if sig is not None:
            argv.append(f"--signal={sig.name.removeprefix('SIG')}")
            if full:
                argv.append("--full")
        if only_pending:
            argv.append("--state=PENDING")
        if only_running:
            argv.append("--state=RUNNING")
        argv.append(job_id)
        result = self._run(argv)
        if result.returncode != 0:
            raise SlurmError(self._failure(result, "scancel"))
        log.info("slurm_job_cancel_sent", job_id=job_id, signal=sig.name if sig else None)
