"""One finding of `runsup check`: a name, ok / warn / fail, what was found, how to fix it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """How a check came out. Only FAIL makes `runsup check` exit non-zero."""

    OK = "ok"
    WARN = "warn"  # works, but worth knowing (a template does not depend on it)
    FAIL = "fail"  # something a template (or every run) needs is missing


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome; `facts` are the figures found, for --json."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready object."""
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix,
            "facts": dict(self.facts),
        }


def ok(name: str, detail: str, **facts: Any) -> CheckResult:
    """A passed check."""
    return CheckResult(name, Status.OK, detail, None, facts)


def warn(name: str, detail: str, fix: str | None, **facts: Any) -> CheckResult:
    """A check that found something worth knowing, not something a template needs."""
    return CheckResult(name, Status.WARN, detail, fix, facts)


def fail(name: str, detail: str, fix: str | None, **facts: Any) -> CheckResult:
    """A check that found something a template needs missing."""
    return CheckResult(name, Status.FAIL, detail, fix, facts)


def exit_code(results: Iterable[CheckResult]) -> int:
    """1 when any check failed, else 0 (warnings allowed)."""
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def names(templates: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c' for a message."""
    items = sorted(templates)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"
