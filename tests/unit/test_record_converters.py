"""RunRecord fields are read with converters chosen from their real types, once."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Optional

import pytest

from supervisor.db.records import RunRecord, field_converters


def test_every_run_record_field_has_a_converter() -> None:
    converters = field_converters(RunRecord)
    assert list(converters) == [f.name for f in fields(RunRecord)]


def test_converters_follow_the_type_not_its_spelling() -> None:
    @dataclass
    class Spelled:
        a: None | int  # noqa: RUF036 (the other spelling is the point)
        b: Optional[float]  # noqa: UP045 (another spelling)
        c: str
        d: datetime | None

    read = field_converters(Spelled)
    assert read["a"]("42") == 42
    assert read["b"]("2.5") == 2.5
    assert read["c"](None) == ""
    when = datetime(2025, 1, 2, tzinfo=UTC)
    assert read["d"](when) == when


def test_foreign_garbage_reads_leniently() -> None:
    read = field_converters(RunRecord)
    assert read["pid"]("not a number") is None
    assert read["pid"](True) is None
    assert read["current_erlang"]("x") is None
    assert read["name"](17) == "17"
    assert read["started_at"]("garbage the type decorator let through") is None


def test_an_unsupported_field_type_fails_loudly() -> None:
    @dataclass
    class Unsupported:
        tags: list[str]

    with pytest.raises(TypeError, match=r"Unsupported\.tags: no row converter"):
        field_converters(Unsupported)
