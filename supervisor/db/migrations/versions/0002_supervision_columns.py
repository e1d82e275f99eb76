"""Exit status, cancel requests, progress bookkeeping, restart identity, and run_events.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS: list[tuple[str, Any]] = [
    ("exit_code", sa.Integer()),
    ("exit_signal", sa.Integer()),
    ("cancel_requested_at", sa.DateTime()),
    ("progress_updated_at", sa.DateTime()),
    ("run_dir", sa.Text()),
    ("launch_claimed_at", sa.DateTime()),
    ("boot_id", sa.String(36)),
    ("pid_start_ticks", sa.Integer()),
    ("keeper_pid", sa.Integer()),
    ("keeper_start_ticks", sa.Integer()),
    ("timed_out_at", sa.DateTime()),
    ("erlang_index", sa.Integer()),
    ("progress_offset", sa.Integer()),
    ("progress_bad_lines", sa.Integer()),
]


def upgrade() -> None:
    # Nullable additions only: every existing row and value stays as it was.
    with op.batch_alter_table("runs") as batch:
        for name, type_ in NEW_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(12), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_run_events_run_id", "run_events", ["run_id"])
    # The daemon's hot queries: pending runs oldest first, open cancel requests.
    op.create_index("ix_runs_status_created", "runs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_created", "runs")
    op.drop_index("ix_run_events_run_id", "run_events")
    op.drop_table("run_events")
    with op.batch_alter_table("runs") as batch:
        for name, _ in reversed(NEW_COLUMNS):
            batch.drop_column(name)
