"""The event stream (issue 13): a small table of the farm's own counters, agents that go offline

- `farm_state (name, value)`: named numbers the server keeps, e.g. `events_pruned_through` (the
  highest event id retention has removed: a client asking for events after an older id is told
  it missed some) and the Celery relay's position in the event table.
- `agent.offline_date`: when the reconciler declared a silent agent offline (its
  `worker-offline` event); a heartbeat brings it back online.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import farmstead.db.types

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = farmstead.db.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "farm_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_farm_state")),
    )
    with op.batch_alter_table("agent") as batch:
        batch.add_column(sa.Column("offline_date", _TIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent") as batch:
        batch.drop_column("offline_date")
    op.drop_table("farm_state")
