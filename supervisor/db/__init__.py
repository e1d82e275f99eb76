"""The database layer: the only package that imports SQLAlchemy."""

from supervisor.db.migrate import HEAD_REVISION, ensure_schema
from supervisor.db.store import (
    ChangeProbe,
    ProgressUpdate,
    RunEvent,
    RunRecord,
    Store,
    check_config_json,
    is_valid_run_id,
    new_run_id,
    utcnow,
)

__all__ = [
    "HEAD_REVISION",
    "ChangeProbe",
    "ProgressUpdate",
    "RunEvent",
    "RunRecord",
    "Store",
    "check_config_json",
    "ensure_schema",
    "is_valid_run_id",
    "new_run_id",
    "utcnow",
]
