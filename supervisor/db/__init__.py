"""The database layer: the only package that imports SQLAlchemy.

Its names are imported on first use (PEP 562): a command that reads through quickread (plain
sqlite3) must not pay SQLAlchemy's import, the largest part of a short command's start.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "AFTER_ANY": "supervisor.db.queue_sql",
    "AFTER_OK": "supervisor.db.queue_sql",
    "ChangeProbe": "supervisor.db.changeprobe",
    "Claim": "supervisor.db.records",
    "Dependency": "supervisor.db.records",
    "HEAD_REVISION": "supervisor.db.migrate",
    "Histogram": "supervisor.db.stats",
    "NewRun": "supervisor.db.records",
    "Pause": "supervisor.db.records",
    "ProgressUpdate": "supervisor.db.records",
    "QUEUE_ALL": "supervisor.db.queue_sql",
    "RowChange": "supervisor.db.changes",
    "RunEvent": "supervisor.db.records",
    "RunRecord": "supervisor.db.records",
    "RunStats": "supervisor.db.stats",
    "Store": "supervisor.db.store",
    "TIME_BUCKETS_SECONDS": "supervisor.db.tallies",
    "cancel_requested_change": "supervisor.db.changes",
    "check_config_json": "supervisor.db.records",
    "claim_released_change": "supervisor.db.changes",
    "corrected_final_change": "supervisor.db.changes",
    "ensure_schema": "supervisor.db.migrate",
    "external_id_change": "supervisor.db.changes",
    "final_change": "supervisor.db.changes",
    "foreign_identity_change": "supervisor.db.changes",
    "hook_done_change": "supervisor.db.changes",
    "is_valid_run_id": "supervisor.db.records",
    "new_run_id": "supervisor.db.records",
    "retry_change": "supervisor.db.changes",
    "running_change": "supervisor.db.changes",
    "standin_change": "supervisor.db.changes",
    "timed_out_change": "supervisor.db.changes",
    "utcnow": "supervisor.db.records",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module when first asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'supervisor.db' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


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
