"""The programs runs and hooks start: found and executable on this machine."""

from __future__ import annotations

import os
import shutil
import string
from collections.abc import Callable, Iterable, Sequence
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
    problems, checked = _problems(
        ((t.name, t.command) for t in settings.templates.values() if t.executor == LOCAL_EXECUTOR),
        which,
    )
    if problems:
        return fail(
            "template commands",
            "; ".join(f"{name}: {why}" for name, why in problems),
            f"install the program or fix the template's command ({PATH_NOTE})",
            problems=dict(problems),
        )
    return ok("template commands", f"{checked} local template command(s) found")


def hooks_check(settings: Settings, which: Which = shutil.which) -> CheckResult:
    """The global on_finish hook and each template's own."""
    hooks = [("[hooks] on_finish", settings.hooks.on_finish)]
    hooks += [(f"{t.name} on_finish", t.on_finish) for t in settings.templates.values()]
    problems, checked = _problems(((n, h) for n, h in hooks if h), which)
    if problems:
        return fail(
            "hooks",
            "; ".join(f"{name}: {why}" for name, why in problems),
            f"install the hook program or fix on_finish ({PATH_NOTE})",
            problems=dict(problems),
        )
    return ok("hooks", f"{checked} hook(s) found" if checked else "none configured")


def _problems(
    argvs: Iterable[tuple[str, Sequence[str]]], which: Which
) -> tuple[list[tuple[str, str]], int]:
    problems = []
    checked = 0
    for name, argv in argvs:
        checked += 1
        why = program_problem(argv[0], which)
        if why is not None:
            problems.append((name, why))
    return problems, checked
