"""Is a Slurm executor usable from here: its commands, the controller, accounting, runs_dir.

The probe calls the Slurm commands itself (it does not need the executor's code): each call
has a timeout, and a timeout or an error is reported as a line, never raised.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from supervisor.checks.result import CheckResult, fail, names, ok, warn
from supervisor.checks.storage import DirState
from supervisor.settings import ExecutorSettings

REQUIRED_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")
OPTIONAL_COMMANDS = ("sacct",)
# How long one probe command may take: a controller that does not answer in this time is
# reported as not answering (the executor's own calls have command_timeout_seconds).
PROBE_TIMEOUT_SECONDS = 5.0
# A message from a command is cut to this many characters.
MAX_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Answer:
    """How one command answered: ok, and its last line of output or why it failed."""

    ok: bool
    message: str
    output: str = ""  # all of stdout (a command that answers on several lines)


@dataclass(frozen=True)
class SlurmProbe:
    """What was found for one executor."""

    commands: Mapping[str, str | None]  # name -> path on PATH, or None
    controller: Answer | None  # None: not asked (no command to ask it with)
    accounting: Answer | None  # None: sacct missing or the controller is not answering
    runs_dir: DirState


Runner = Callable[[Sequence[str], float], Answer]


def run_command(argv: Sequence[str], timeout: float) -> Answer:
    """Run a probe command with a timeout; its last output line, or why it failed."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Answer(False, f"no answer within {timeout:g} s")
    except OSError as exc:
        return Answer(False, f"cannot run {argv[0]}: {exc.strerror}")
    # A failing command says why on stderr, mostly; `scontrol ping` says DOWN on stdout.
    text = (done.stderr if done.returncode != 0 and done.stderr.strip() else done.stdout).strip()
    last = text.splitlines()[-1] if text else f"exit status {done.returncode}"
    return Answer(done.returncode == 0, last[:MAX_MESSAGE_CHARS], done.stdout)


def probe_slurm(
    executor: ExecutorSettings,
    runs_dir: DirState,
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = run_command,
) -> SlurmProbe:
    """Look for the executor's commands, then ask the controller and accounting."""
    commands = {name: which(name) for name in (*REQUIRED_COMMANDS, *OPTIONAL_COMMANDS)}
    timeout = min(PROBE_TIMEOUT_SECONDS, executor.command_timeout_seconds)
    controller = None
    if commands["scontrol"]:
        controller = ping_answer(run([commands["scontrol"], "ping"], timeout))
    elif commands["squeue"]:
        queue = run([commands["squeue"], "-h", "-o", "%i", "--me"], timeout)
        controller = Answer(True, "squeue answers") if queue.ok else queue
    accounting = None
    if commands["sacct"] and controller is not None and controller.ok:
        # A window that holds no job: only whether sacct answers matters.
        accounting = run([commands["sacct"], "-n", "-X", "-S", "now", "-o", "JobID"], timeout)
    return SlurmProbe(commands, controller, accounting, runs_dir)


def ping_answer(answer: Answer) -> Answer:
    """`scontrol ping` says "Slurmctld(primary) at HOST is UP" (or DOWN), a line for each
    controller: the cluster answers when one of them is up."""
    lines = [line.strip() for line in answer.output.splitlines() if line.strip()]
    if any(line.endswith(" is UP") for line in lines):
        return Answer(True, "; ".join(lines)[:MAX_MESSAGE_CHARS], answer.output)
    return Answer(False, answer.message, answer.output)


def executor_checks(
    executor: ExecutorSettings, probe: SlurmProbe, used_by: Sequence[str]
) -> list[CheckResult]:
    """The executor's commands, controller, accounting and runs_dir; a FAIL where a template
    that uses it would not run, a WARN where none does."""
    name = f"executor {executor.name}"
    bad = fail if used_by else warn
    users = f"used by {names(used_by)}" if used_by else "no template uses it"
    facts = {"kind": executor.kind, "used_by": list(used_by)}
    missing = [c for c in REQUIRED_COMMANDS if probe.commands.get(c) is None]
    if missing:
        results = [
            bad(
                name,
                f"{users}; {', '.join(missing)} not found on PATH",
                "install Slurm's client commands (Debian: slurm-client) on this machine, "
                "or put them on the daemon's PATH",
                **facts,
                missing=missing,
            )
        ]
    else:
        results = [ok(name, f"{users}; {', '.join(REQUIRED_COMMANDS)} found", **facts)]
    results.append(_controller(name, probe, bad))
    if probe.accounting is not None:
        results.append(_accounting(name, probe.accounting))
    results.append(_runs_dir(name, probe.runs_dir, bad))
    return results


def _controller(name: str, probe: SlurmProbe, bad: Callable[..., CheckResult]) -> CheckResult:
    answer = probe.controller
    if answer is None:
        return bad(f"{name}: controller", "not asked: neither scontrol nor squeue found",
                   "install Slurm's client commands", answering=False)  # fmt: skip
    if not answer.ok:
        return bad(
            f"{name}: controller",
            f"not answering: {answer.message}",
            "check that slurmctld runs and that this machine has the cluster's slurm.conf "
            "(or SLURM_CONF) and munge key",
            answering=False,
        )
    return ok(f"{name}: controller", answer.message, answering=True)


def _accounting(name: str, answer: Answer) -> CheckResult:
    if answer.ok:
        return ok(f"{name}: accounting", "sacct answers", accounting=True)
    return warn(
        f"{name}: accounting",
        f"sacct does not answer: {answer.message}; outcomes of jobs Slurm has forgotten "
        "are then less exact",
        "optional: set up slurmdbd for Slurm accounting",
        accounting=False,
    )


def _runs_dir(name: str, state: DirState, bad: Callable[..., CheckResult]) -> CheckResult:
    what = "exists" if state.exists else "will be created"
    facts = {"path": str(state.path), "exists": state.exists, "filesystem": state.fstype}
    if state.problem is not None:
        return bad(
            f"{name}: runs_dir",
            f"{state.path} {state.problem}",
            "create it (the same path on the compute nodes), writable for the daemon's user",
            **facts,
        )
    return ok(f"{name}: runs_dir", f"{state.path} {what}, writable", **facts)
