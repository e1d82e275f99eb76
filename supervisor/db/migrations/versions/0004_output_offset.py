"""Where the daemon stopped reading a run's output for progress patterns (SPEC section 12),
and a partial index of the runs that ask for a cancel (the daemon looks at them every pass).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
# As supervisor.db.schema.CANCEL_REQUESTED_SQL when this revision was written.
CANCEL_REQUESTED_SQL = "cancel_requested_at IS NOT NULL AND status IN ('PENDING', 'RUNNING')"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable addition: every existing row and value stays as it was.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("output_offset", sa.Integer(), nullable=True))
    op.create_index(
        "ix_runs_cancel_requested",
        "runs",
        ["id"],
        sqlite_where=sa.text(CANCEL_REQUESTED_SQL),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_cancel_requested", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("output_offset")
