"""Queue, resources and executors (SPEC sections 9 to 11), hook bookkeeping, two new tables.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NEW_COLUMNS: list[tuple[str, Any]] = [
    ("priority", sa.Integer()),
    ("not_before", sa.DateTime()),
    ("attempt", sa.Integer()),
    ("sweep_id", sa.String(12)),
    ("executor", sa.String(100)),
    ("external_id", sa.Text()),
    ("host", sa.Text()),
    ("cpus", sa.Integer()),
    ("gpu_ids", sa.Text()),
    ("memory_max_bytes", sa.Integer()),
    ("peak_memory_bytes", sa.Integer()),
    ("hook_done_at", sa.DateTime()),
]


def upgrade() -> None:
    # Nullable additions only: every existing row and value stays as it was.
    with op.batch_alter_table("runs") as batch:
        for name, type_ in NEW_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    # The pickup query walks this in queue order (see supervisor.db.schema.queue_index).
    op.create_index(
        "ix_runs_queue",
        "runs",
        ["status", sa.text("coalesce(priority, 0) DESC"), "created_at", "id"],
    )
    op.create_table(
        "run_dependencies",
        sa.Column("run_id", sa.String(12), nullable=False),
        sa.Column("depends_on", sa.String(12), nullable=False),
        sa.Column("kind", sa.String(20), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "depends_on"),
    )
    op.create_index("ix_run_dependencies_depends_on", "run_dependencies", ["depends_on"])
    op.create_table(
        "queue_pauses",
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("paused_at", sa.DateTime, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("queue_pauses")
    op.drop_index("ix_run_dependencies_depends_on", "run_dependencies")
    op.drop_table("run_dependencies")
    op.drop_index("ix_runs_queue", "runs")
    with op.batch_alter_table("runs") as batch:
        for name, _ in reversed(NEW_COLUMNS):
            batch.drop_column(name)
