"""The database layer: the only package that imports SQLAlchemy."""

from supervisor.db.changeprobe import ChangeProbe
from supervisor.db.changes import (
    RowChange,
    cancel_requested_change,
    claim_released_change,
    corrected_final_change,
    external_id_change,
    final_change,
    foreign_identity_change,
    hook_done_change,
    retry_change,
    running_change,
    standin_change,
    timed_out_change,
)
from supervisor.db.migrate import HEAD_REVISION, ensure_schema
from supervisor.db.queue_sql import AFTER_ANY, AFTER_OK, QUEUE_ALL
from supervisor.db.records import (
    Claim,
    Dependency,
    NewRun,
    Pause,
    ProgressUpdate,
    RunEvent,
    RunRecord,
    check_config_json,
    is_valid_run_id,
    new_run_id,
    utcnow,
)
from supervisor.db.stats import Histogram, RunStats
from supervisor.db.store import Store
from supervisor.db.tallies import TIME_BUCKETS_SECONDS

__all__ = [
    "AFTER_ANY",
    "AFTER_OK",
    "HEAD_REVISION",
    "QUEUE_ALL",
    "TIME_BUCKETS_SECONDS",
    "ChangeProbe",
    "Claim",
    "Dependency",
    "Histogram",
    "NewRun",
    "Pause",
    "ProgressUpdate",
    "RowChange",
    "RunEvent",
    "RunRecord",
    "RunStats",
    "Store",
    "cancel_requested_change",
    "check_config_json",
    "claim_released_change",
    "corrected_final_change",
    "ensure_schema",
    "external_id_change",
    "final_change",
    "foreign_identity_change",
    "hook_done_change",
    "is_valid_run_id",
    "new_run_id",
    "retry_change",
    "running_change",
    "standin_change",
    "timed_out_change",
    "utcnow",
]
