"""The database layer: the only package that imports SQLAlchemy."""

from supervisor.db.migrate import HEAD_REVISION, ensure_schema
from supervisor.db.stats import Histogram, RunStats
from supervisor.db.store import (
    ChangeProbe,
    ProgressUpdate,
    RowChange,
    RunEvent,
    RunRecord,
    Store,
    check_config_json,
    claim_released_change,
    final_change,
    is_valid_run_id,
    new_run_id,
    running_change,
    timed_out_change,
    utcnow,
)

__all__ = [
    "HEAD_REVISION",
    "ChangeProbe",
    "Histogram",
    "ProgressUpdate",
    "RowChange",
    "RunEvent",
    "RunRecord",
    "RunStats",
    "Store",
    "check_config_json",
    "claim_released_change",
    "ensure_schema",
    "final_change",
    "is_valid_run_id",
    "new_run_id",
    "running_change",
    "timed_out_change",
    "utcnow",
]
