"""Indexes for reading a long history in a bounded time: the newest runs (`runsup results`),
the runs that ended last (`runsup list`) and the runs of one sweep (`--sweep`, the client's
sweep handles), each found by an index walk instead of a scan of every run.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As supervisor.db.schema's index names when this revision was written.
INDEXES = {
    "ix_runs_created_at": ["created_at"],
    "ix_runs_completed_at": ["completed_at"],
    "ix_runs_sweep_id": ["sweep_id"],
}


def upgrade() -> None:
    # Indexes only: every row and value stays as it was.
    for name, columns in INDEXES.items():
        op.create_index(name, "runs", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="runs")
