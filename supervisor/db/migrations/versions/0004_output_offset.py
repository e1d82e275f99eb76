"""Where the daemon stopped reading a run's output for progress patterns (SPEC section 12).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable addition: every existing row and value stays as it was.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("output_offset", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("output_offset")
