"""Pure pieces of the Slurm command layer: sbatch arguments, and squeue / sacct output parsed.

No process is started here; `commands.py` runs the programs and hands their output to these
functions. The output formats are the ones `commands.py` asks for (fields separated by "|",
the job name last because it is the only free-text field); tests/unit feed them text captured
from a real cluster (Slurm 22.05).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

JOB_NAME_PREFIX = "runsup-"
SECONDS_PER_MINUTE = 60
BYTES_PER_MIB = 1024 * 1024
FIELD_SEPARATOR = "|"
SUBMIT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Slurm's --signal takes at most this many seconds of warning (a 16-bit field).
MAX_SIGNAL_SECONDS = 65535

# squeue -O: ":0" is "no width limit", the suffix after it separates the fields. exit_code is
# the raw wait status (768 = exit 3, 11 = SIGSEGV); ExitCode ("a:b") is not a field of squeue.
SQUEUE_FIELDS = ("JobID", "State", "exit_code", "Reason", "NodeList", "Name")
SQUEUE_FORMAT = ",".join(f"{name}:0{FIELD_SEPARATOR}" for name in SQUEUE_FIELDS[:-1]) + ",Name:0"
# sacct -P separates by "|" itself; JobName is last for the same reason as above.
SACCT_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "MaxRSS", "Reason", "JobName")
SACCT_FORMAT = ",".join(SACCT_FIELDS)

_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)([KMGTP]?)\Z")
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_JOB_ID = re.compile(r"\A[0-9]+\Z")
_NO_NODE = frozenset({"", "None assigned", "(null)"})
_NO_REASON = frozenset({"", "None", "(null)"})


class JobState(StrEnum):
    """A Slurm job state as this project reads it (UNKNOWN: no state, or one not listed)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"


# The job has ended and will not run again (Slurm's own words for it are "completed states").
FINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)
# Slurm states that are steps of another: a job being set up has not started; one being
# requeued waits again; a job being signalled or staged out still holds its node.
_STATE_ALIASES = {
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.COMPLETING,
    "STOPPED": JobState.SUSPENDED,
}


@dataclass(frozen=True)
class JobInfo:
    """What the cluster knows of one job.

    `exit_code`/`exit_signal` are Slurm's record of the batch script's end: meaningful only
    once `state` is final (a job cancelled while queued reads 0, none). `purged` is set when
    no source knows the id any more (the record left slurmctld and there is no accounting).
    """

    job_id: str
    state: JobState
    raw_state: str = ""
    name: str = ""
    exit_code: int | None = None
    exit_signal: int | None = None
    node: str | None = None
    reason: str | None = None
    max_rss_bytes: int | None = None
    source: str = "none"  # "squeue", "sacct" or "none"

    @property
    def purged(self) -> bool:
        """True when no source knows this job (its record is gone)."""
        return self.source == "none"

    @property
    def final(self) -> bool:
        """True once the job has ended for good."""
        return self.state in FINAL_STATES


def purged_job(job_id: str) -> JobInfo:
    """The record of a job no source knows any more."""
    return JobInfo(job_id=job_id, state=JobState.UNKNOWN)


def job_name(run_id: str, attempt: int = 1) -> str:
    """The Slurm job name of one attempt of a run (`runsup-<run id>-<attempt>`): how its job is
    found again after a daemon crash, never mistaken for an earlier attempt's."""
    return f"{JOB_NAME_PREFIX}{run_id}-{attempt}"


def parse_state(text: str) -> JobState:
    """A state as squeue or sacct print it ("CANCELLED by 0" included) -> JobState."""
    word = text.strip().split(" ", 1)[0].rstrip("+")
    if word in JobState.__members__:
        return JobState(word)
    return _STATE_ALIASES.get(word, JobState.UNKNOWN)


def decode_wait_status(status: int) -> tuple[int | None, int | None]:
    """squeue's exit_code (a raw wait status) -> (exit code, signal); exactly one is set."""
    signal_number = status & 0x7F
    if signal_number:
        return None, signal_number
    return (status >> 8) & 0xFF, None


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct's ExitCode "code:signal" -> (exit code, signal); a signal wins over the code."""
    code, _, sig = text.strip().partition(":")
    try:
        exit_code, signal_number = int(code), int(sig or "0")
    except ValueError:
        return None, None
    if signal_number:
        return None, signal_number
    return exit_code, None


def parse_size(text: str) -> int | None:
    """A Slurm size such as "2048K" or "1.5G" (powers of 1024; bare numbers are bytes)."""
    match = _SIZE.match(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _SIZE_FACTORS[match.group(2)])


def _optional(text: str, empty: frozenset[str]) -> str | None:
    stripped = text.strip()
    return None if stripped in empty else stripped


def parse_squeue(output: str) -> dict[str, JobInfo]:
    """`squeue -h -O SQUEUE_FORMAT` output -> {job id: JobInfo}; malformed lines are skipped."""
    jobs: dict[str, JobInfo] = {}
    for line in output.splitlines():
        parts = line.split(FIELD_SEPARATOR, len(SQUEUE_FIELDS) - 1)
        if len(parts) != len(SQUEUE_FIELDS) or not _JOB_ID.match(parts[0].strip()):
            continue
        job_id, state_text, status, reason, node, name = (p.strip() for p in parts)
        state = parse_state(state_text)
        exit_code, exit_signal = (None, None)
        if state in FINAL_STATES and status.isdigit():
            exit_code, exit_signal = decode_wait_status(int(status))
        jobs[job_id] = JobInfo(
            job_id=job_id,
            state=state,
            raw_state=state_text,
            name=name,
            exit_code=exit_code,
            exit_signal=exit_signal,
            node=_optional(node, _NO_NODE),
            reason=_optional(reason, _NO_REASON),
            source="squeue",
        )
    return jobs


@dataclass
class _SacctJob:
    fields: dict[str, str]
    batch_exit: str | None = None
    max_rss: list[int] = field(default_factory=list)


def parse_sacct(output: str) -> dict[str, JobInfo]:
    """`sacct -n -P -o SACCT_FORMAT` output -> {job id: JobInfo}, steps folded into their job.

    The job's own line gives state, node and reason; its `.batch` step gives the script's
    exit status (the job line reads 0:0 for a cancelled job whose script died of SIGTERM);
    MaxRSS is the largest over the steps.
    """
    jobs: dict[str, _SacctJob] = {}
    for line in output.splitlines():
        parts = line.split(FIELD_SEPARATOR, len(SACCT_FIELDS) - 1)
        if len(parts) != len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, parts, strict=True))
        job_id, _, step = row["JobID"].partition(".")
        if not _JOB_ID.match(job_id):
            continue
        job = jobs.setdefault(job_id, _SacctJob(fields={}))
        if not step:
            job.fields = row
        elif step == "batch":
            job.batch_exit = row["ExitCode"]
        rss = parse_size(row["MaxRSS"])
        if rss is not None:
            job.max_rss.append(rss)
    return {job_id: _sacct_info(job_id, job) for job_id, job in jobs.items() if job.fields}


def _sacct_info(job_id: str, job: _SacctJob) -> JobInfo:
    row = job.fields
    exit_code, exit_signal = parse_exit_code(job.batch_exit or row["ExitCode"])
    state = parse_state(row["State"])
    if state not in FINAL_STATES:
        exit_code, exit_signal = None, None
    return JobInfo(
        job_id=job_id,
        state=state,
        raw_state=row["State"].strip(),
        name=row["JobName"].strip(),
        exit_code=exit_code,
        exit_signal=exit_signal,
        node=_optional(row["NodeList"], _NO_NODE),
        reason=_optional(row["Reason"], _NO_REASON),
        max_rss_bytes=max(job.max_rss) if job.max_rss else None,
        source="sacct",
    )


def merge_accounting(
    listed: Mapping[str, JobInfo], accounted: Mapping[str, JobInfo]
) -> dict[str, JobInfo]:
    """squeue's records completed with sacct's: sacct's for the jobs squeue no longer lists;
    for the others squeue's stays the authority and gains sacct's MaxRSS. (sacct can lag: for
    a moment slurmdbd holds a placeholder named "allocation", already COMPLETED.)"""
    merged = dict(listed)
    for job_id, info in accounted.items():
        known = listed.get(job_id)
        if known is None:
            merged[job_id] = info
        elif info.name == known.name:
            merged[job_id] = replace(known, max_rss_bytes=info.max_rss_bytes)
    return merged


def parse_submit_time(text: str) -> datetime | None:
    """squeue's %V / sacct's Submit ("2026-12-07T20:50:33", the controller's local time) as an
    aware datetime; None for "Unknown" or anything else."""
    try:
        moment = datetime.strptime(text.strip(), SUBMIT_TIME_FORMAT)
    except ValueError:
        return None
    return moment.astimezone(UTC)  # naive: read as this machine's local time


def parse_job_names(
    output: str, since: datetime | Mapping[str, datetime] | None = None
) -> dict[str, str]:
    """`JobID|Submit|Name` lines (squeue or sacct) -> {name: newest job id with that name},
    only jobs submitted at or after `since` (one moment, or one per name; to the second, as
    Slurm records it)."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        job_id, sep, rest = line.partition(FIELD_SEPARATOR)
        submitted, sep2, name = rest.partition(FIELD_SEPARATOR)
        job_id, name = job_id.strip(), name.strip()
        if not sep or not sep2 or not _JOB_ID.match(job_id):
            continue  # steps ("12.batch") and noise
        floor = since.get(name) if isinstance(since, Mapping) else since
        if floor is not None:
            moment = parse_submit_time(submitted)
            if moment is None or moment < floor.replace(microsecond=0):
                continue  # an earlier claim's job (or one whose time cannot be read)
        if name not in found or int(job_id) > int(found[name]):
            found[name] = job_id
    return found


def parse_submitted_id(output: str) -> str:
    """`sbatch --parsable` output ("id" or "id;cluster") -> the job id; ValueError if none."""
    first = output.strip().split(";", 1)[0]
    if not _JOB_ID.match(first):
        raise ValueError(f"sbatch printed no job id: {output.strip()[:200]!r}")
    return first


@dataclass(frozen=True)
class SubmitRequest:
    """One batch job to submit: the run, its directory, the script and what it asks for."""

    run_id: str
    run_dir: Path
    script: str  # the batch script's text (with its #! line), given to sbatch on stdin
    log_path: Path | None = None  # default: <run_dir>/logs/sim.log
    cpus: int | None = None
    gpus: int | None = None
    memory_bytes: int | None = None
    timeout_seconds: float | None = None
    partition: str | None = None
    account: str | None = None
    sbatch_args: Sequence[str] = ()
    attempt: int = 1  # the run's attempt this job is (its name says it)
    # Sent to the batch script (which forwards it to the simulation) this long before the
    # job's time limit, and at a preemption the cluster warns of (sbatch --signal=B:SIG@secs).
    checkpoint_signal: str | None = None
    checkpoint_seconds: int | None = None
    # The job's variables, exported by name (values travel in sbatch's own environment, so a
    # value may hold commas). Slurm then starts the job with the user's login environment
    # plus these (as --get-user-env), not the daemon's. None: Slurm's default (sbatch's whole
    # environment, which is the daemon's).
    env: Mapping[str, str] | None = None

    @property
    def output_path(self) -> Path:
        """Where the job's stdout and stderr go."""
        return self.log_path or self.run_dir / "logs" / "sim.log"


def time_limit_minutes(timeout_seconds: float) -> int:
    """A timeout in seconds -> sbatch --time minutes, rounded up (Slurm counts minutes)."""
    return max(1, math.ceil(timeout_seconds / SECONDS_PER_MINUTE))


def memory_mib(memory_bytes: int) -> int:
    """A memory cap in bytes -> sbatch --mem MiB, rounded up."""
    return max(1, math.ceil(memory_bytes / BYTES_PER_MIB))


def export_option(env: Mapping[str, str] | None) -> str | None:
    """The --export value for `env`: its names only (NONE when empty, None for the default)."""
    if env is None:
        return None
    bad = [name for name in env if not _ENV_NAME.match(name)]
    if bad:
        raise ValueError(f"not a variable name: {bad[0]!r}")
    return ",".join(sorted(env)) if env else "NONE"


def sbatch_argv(request: SubmitRequest) -> list[str]:
    """The sbatch arguments (program name excluded) for `request`; the script goes on stdin."""
    argv = [
        "--parsable",
        f"--job-name={job_name(request.run_id, request.attempt)}",
        f"--output={request.output_path}",
        "--open-mode=append",  # a log the daemon already wrote to is kept
        f"--chdir={request.run_dir}",
        # One job is one attempt: a job the cluster would requeue (after a node failure or a
        # preemption) would run the same attempt twice, unseen; it ends (NODE_FAIL, PREEMPTED)
        # instead, and the run's retry_on decides about the next attempt (a new job).
        "--no-requeue",
    ]
    if request.cpus is not None:
        argv.append(f"--cpus-per-task={request.cpus}")
    if request.gpus:
        argv.append(f"--gpus={request.gpus}")
    if request.memory_bytes is not None:
        argv.append(f"--mem={memory_mib(request.memory_bytes)}M")
    if request.timeout_seconds is not None:
        argv.append(f"--time={time_limit_minutes(request.timeout_seconds)}")
    if request.checkpoint_signal is not None:
        lead = min(MAX_SIGNAL_SECONDS, max(0, request.checkpoint_seconds or 0))
        argv.append(f"--signal=B:{request.checkpoint_signal}@{lead}")
    if request.partition:
        argv.append(f"--partition={request.partition}")
    if request.account:
        argv.append(f"--account={request.account}")
    export = export_option(request.env)
    if export is not None:
        argv.append(f"--export={export}")
    argv.extend(request.sbatch_args)  # last: the template's own arguments win
    return argv


# sbatch failures that say nothing about whether the job exists: the controller may have
# taken it. Anything else sbatch refuses ("Invalid partition name specified", ...) is final.
_UNCERTAIN_SUBMIT_ERRORS = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Zero Bytes were transmitted or received",
    "Communication connection failure",
    "Slurmctld is busy",
    "Resource temporarily unavailable",
    "authentication",
    "Protocol version has changed",
    "backup controller",
)


def submit_error_is_final(stderr: str) -> bool:
    """True when sbatch's error means the job was refused (it surely does not exist)."""
    return not any(marker.lower() in stderr.lower() for marker in _UNCERTAIN_SUBMIT_ERRORS)


def unknown_ids(requested: Iterable[str], known: Mapping[str, JobInfo]) -> list[str]:
    """The requested ids (order kept, no duplicates) that `known` lacks."""
    return [job_id for job_id in dict.fromkeys(requested) if job_id not in known]
