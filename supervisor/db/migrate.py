"""Schema versioning: Alembic migrations shipped in the package, applied in place."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from supervisor.db.engine import READ_OPTION

# The newest revision in migrations/versions; a test checks it against Alembic's head.
HEAD_REVISION = "0007"
# The revision whose schema is the original 15-column table other programs created.
ORIGINAL_REVISION = "0001"
SCRIPT_LOCATION = "supervisor.db:migrations"


def current_revision(conn: Connection) -> str | None:
    """The stored schema revision, or None for a database Alembic never touched."""
    try:
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except OperationalError:
        return None
    return None if row is None else str(row[0])


def ensure_schema(engine: Engine) -> str:
    """Bring the schema to HEAD_REVISION if it is behind; cheap when it is not. Returns it."""
    with engine.connect() as plain:
        # A deferred read: opening a database must not take its write lock.
        conn = plain.execution_options(**{READ_OPTION: True})
        if current_revision(conn) == HEAD_REVISION:
            return HEAD_REVISION
    # The write lock (BEGIN IMMEDIATE) serialises two processes upgrading at once;
    # the second one re-reads the revision under the lock and finds nothing to do.
    with engine.begin() as conn:
        revision = current_revision(conn)
        if revision == HEAD_REVISION:
            return revision
        _upgrade(conn, revision)
    return HEAD_REVISION


def _upgrade(conn: Connection, revision: str | None) -> None:
    # Alembic is imported only here: most commands start without it.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = conn
    if revision is None and inspect(conn).has_table("runs"):
        # A database created by a program that knew only the original table.
        command.stamp(config, ORIGINAL_REVISION)
    command.upgrade(config, "head")


def alembic_head() -> str:
    """Alembic's own idea of the head revision (for tests and `db upgrade`)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    head = ScriptDirectory.from_config(config).get_current_head()
    return str(head)
