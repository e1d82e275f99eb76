"""The programs runs and hooks start: found and executable on this machine."""

from __future__ import annotations

import os
import shutil
import string
from collections.abc import Callable, Sequence
from pathlib import Path

from supervisor.checks.result import CheckResult, fail, ok
from supervisor.settings import LOCAL_EXECUTOR, Settings

PYTHON_PLACEHOLDER = "{python}"
# The daemon's PATH may be shorter than this shell's (systemd gives services a fixed one).
PATH_NOTE = "an absolute path is safest: the daemon's PATH may differ from this shell's"

Which = Callable[[str], str | None]


def program_problem(program: str, which: Which = shutil.which) -> str | None:
    """Why `program` (an argv[0]) cannot be started here, or None when it can or cannot be told
    before a run (it names a placeholder other than {python}: a path inside the run)."""
    if program == PYTHON_PLACEHOLDER:
        return None
    if any(field for _, field, _, _ in string.Formatter().parse(program)):
        return None
    if "/" not in program:
        return None if which(program) else f"{program} not found on PATH"
    path = Path(program)
    if not path.exists():
        return f"{program} does not exist"
    if path.is_dir() or not os.access(path, os.X_OK):
        return f"{program} is not an executable file"
    return None


def commands_check(settings: Settings, which: Which = shutil.which) -> CheckResult:
    """The command of each local template (a cluster's templates run on its nodes)."""
    local = [
        (t.name, t.command) for t in settings.templates.values() if t.executor == LOCAL_EXECUTOR
    ]
    return _programs_check(
        "template commands", local, "install the program or fix the template's command", which
    )


def hooks_check(settings: Settings, which: Which = shutil.which) -> CheckResult:
    """The global on_finish hook and each template's own."""
    hooks = [("[hooks] on_finish", settings.hooks.on_finish)]
    hooks += [(f"{t.name} on_finish", t.on_finish) for t in settings.templates.values()]
    found = [(name, argv) for name, argv in hooks if argv]
    if not found:
        return ok("hooks", "none configured")
    return _programs_check("hooks", found, "install the hook program or fix on_finish", which)


def _programs_check(
    name: str, argvs: Sequence[tuple[str, Sequence[str]]], fix: str, which: Which
) -> CheckResult:
    problems = [(what, why) for what, argv in argvs if (why := program_problem(argv[0], which))]
    if problems:
        return fail(
            name,
            "; ".join(f"{what}: {why}" for what, why in problems),
            f"{fix} ({PATH_NOTE})",
            problems=dict(problems),
        )
    return ok(name, f"{len(argvs)} found")
