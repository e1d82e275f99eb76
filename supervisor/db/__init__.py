"""The database layer: the only package that imports SQLAlchemy."""

from supervisor.db.migrate import HEAD_REVISION, ensure_schema
from supervisor.db.store import (
    ChangeProbe,
    ProgressUpdate,
    RowChange,
    RunEvent,
    RunRecord,
    Store,
    check_config_json,
    claim_released_change,
    corrected_final_change,
    final_change,
    foreign_identity_change,
    is_valid_run_id,
    kept_foreign_final_change,
    new_run_id,
    running_change,
    timed_out_change,
    utcnow,
)

__all__ = [
    "HEAD_REVISION",
    "ChangeProbe",
    "ProgressUpdate",
    "RowChange",
    "RunEvent",
    "RunRecord",
    "Store",
    "check_config_json",
    "claim_released_change",
    "corrected_final_change",
    "ensure_schema",
    "final_change",
    "foreign_identity_change",
    "is_valid_run_id",
    "kept_foreign_final_change",
    "new_run_id",
    "running_change",
    "timed_out_change",
    "utcnow",
]
