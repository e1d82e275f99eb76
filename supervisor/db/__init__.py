"""The database layer: the only package that imports SQLAlchemy."""

from supervisor.db.migrate import HEAD_REVISION, ensure_schema
from supervisor.db.stats import Histogram, RunStats
from supervisor.db.store import (
    ChangeProbe,
    Claim,
    ProgressUpdate,
    RowChange,
    RunEvent,
    RunRecord,
    Store,
    check_config_json,
    claim_released_change,
    corrected_final_change,
    external_id_change,
    final_change,
    foreign_identity_change,
    is_valid_run_id,
    new_run_id,
    running_change,
    timed_out_change,
    utcnow,
)

__all__ = [
    "HEAD_REVISION",
    "ChangeProbe",
    "Claim",
    "Histogram",
    "ProgressUpdate",
    "RowChange",
    "RunEvent",
    "RunRecord",
    "RunStats",
    "Store",
    "check_config_json",
    "claim_released_change",
    "corrected_final_change",
    "ensure_schema",
    "external_id_change",
    "final_change",
    "foreign_identity_change",
    "is_valid_run_id",
    "new_run_id",
    "running_change",
    "timed_out_change",
    "utcnow",
]
