"""What a daemon start reads, found without walking every final row (issue 23):

- `final_unconfirmed`: 1 while a row's final status has no run_events row saying it (every
  status change the daemon writes has one, in the same transaction; another program writing a
  final status over a live run has none), set and cleared by triggers; a partial index holds
  only those rows, the candidates of `Store.overturned_runs`;
(the hook catch-up at start reads the last week's ends through 0005's ix_runs_completed_at).

A later migration that rebuilds `runs` (a batch "move and copy") drops these triggers with the
old table, as those of 0006: it must create them again.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# As supervisor.db.schema when this revision was written.
FINAL_SQL = "('CANCELLED', 'COMPLETED', 'FAILED')"
UNCONFIRMED = "final_unconfirmed"
UNCONFIRMED_INDEX = "ix_runs_final_unconfirmed"
_SET = f"  UPDATE runs SET {UNCONFIRMED} = 1 WHERE id = NEW.id;\n"
TRIGGERS = {
    "final_unconfirmed_set": (
        f"AFTER UPDATE OF status ON runs WHEN NEW.status IN {FINAL_SQL}"
        " AND NEW.status IS NOT OLD.status",
        _SET,
    ),
    "final_unconfirmed_insert": (f"AFTER INSERT ON runs WHEN NEW.status IN {FINAL_SQL}", _SET),
    "final_unconfirmed_clear": (
        f"AFTER INSERT ON run_events WHEN NEW.to_status IN {FINAL_SQL}",
        f"  UPDATE runs SET {UNCONFIRMED} = NULL"
        f" WHERE id = NEW.run_id AND status = NEW.to_status AND {UNCONFIRMED} IS NOT NULL;\n",
    ),
}


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy of the table, which would drop 0006's triggers).
    op.add_column("runs", sa.Column(UNCONFIRMED, sa.Integer(), nullable=True))
    op.execute(
        f"UPDATE runs SET {UNCONFIRMED} = 1 WHERE status IN {FINAL_SQL} AND status IS NOT"
        " (SELECT e.to_status FROM run_events e WHERE e.run_id = runs.id"
        " ORDER BY e.id DESC LIMIT 1)"
    )
    op.execute(f"CREATE INDEX {UNCONFIRMED_INDEX} ON runs (id) WHERE {UNCONFIRMED} IS NOT NULL")
    for name, (when, body) in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when}\nBEGIN\n{body}END")


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index(UNCONFIRMED_INDEX, table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column(UNCONFIRMED)
