"""How the database stores a time (SPEC section 3): UTC text, kept apart from the schema so that
readers without SQLAlchemy (supervisor.db.quickread) share it."""

# SQLAlchemy's own SQLite text form, so programs written for the original schema read ours.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
