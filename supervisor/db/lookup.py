"""Run and sweep ids from what a person typed: the whole id or a unique prefix (SPEC section 7).

Functions of a connection, as db/stats.py: the store opens the read transaction. Ids are
lowercase hex, so a prefix is matched with a range on the primary key (`id >= p AND id < p~`),
which SQLite answers from the index, not with LIKE (whose `_` and `%` would need escaping).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from supervisor.db.schema import runs
from supervisor.errors import NotFoundError, ValidationError

# Shorter prefixes would match too much by chance: "a" is a sixteenth of every run.
MIN_PREFIX_CHARS = 4
# Enough matches to say a prefix is ambiguous and name a few of them.
AMBIGUOUS_SHOWN = 3
# Sorts after every character an id holds (hex digits), so [p, p + this) holds every id
# that starts with p.
_PAST_HEX = "~"


def resolve(conn: Connection, typed: str, *, sweep: bool = False) -> str:
    """The one run id (or sweep id) that is `typed` or starts with it.

    NotFoundError if none does; ValidationError if the prefix is too short or names more
    than one.
    """
    what = "sweep" if sweep else "run"
    column: Any = runs.c.sweep_id if sweep else runs.c.id
    exact = conn.execute(select(column).where(column == typed).limit(1)).first()
    if exact is not None:
        return typed
    if len(typed) < MIN_PREFIX_CHARS:
        raise NotFoundError(
            f"no {what} with id {typed!r} (a shortened id needs {MIN_PREFIX_CHARS} characters)"
        )
    query = (
        select(column)
        .where(column >= typed, column < typed + _PAST_HEX)
        .distinct()
        .order_by(column)
        .limit(AMBIGUOUS_SHOWN + 1)
    )
    found = [str(row[0]) for row in conn.execute(query)]
    if not found:
        raise NotFoundError(f"no {what} with id {typed!r}")
    if len(found) > 1:
        more = ", ..." if len(found) > AMBIGUOUS_SHOWN else ""
        shown = ", ".join(found[:AMBIGUOUS_SHOWN]) + more
        raise ValidationError(f"{what} id {typed!r} is ambiguous: {shown} all start with it")
    return found[0]
