"""The taskfarm face (issue 11): runs, their instances kept out of farmstead's claims, workers

- `workflow.uuid`: a pull-based taskfarm run's uuid (hex); null for every other workflow;
- `workflow.pull_timeout`: seconds a run's claimed task may go without an update;
- `task_instance.pull`: an instance of such a run. The claim-order index of every QUEUED
  instance (`ix_task_instance_queued_priority_id`) now leaves these out, so farmstead's own
  executors neither claim them nor walk past them (a run's own claims walk the workflow
  index);
- `task.resets`: DONE tries a reset of a finished run set aside (taskfarm's `restart?all=True`,
  the one move out of DONE), so `farmstead db check` still counts every DONE instance;
- `taskfarm_worker`: the workers registered with `POST /api/worker`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import farmstead.db.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = farmstead.db.types.UTCDateTime(timezone=True)
_QUEUED = sa.text("status = 'Q'")
_SQLITE_PUSH = sa.text("status = 'Q' AND pull = 0")
_PG_PUSH = sa.text("status = 'Q' AND NOT pull")
_ORDER = [sa.column("priority").desc(), "id"]


def _claim_order_index(sqlite_where: sa.TextClause, postgresql_where: sa.TextClause) -> None:
    # outside a batch: SQLite's table copy would rebuild the index without its DESC
    op.create_index(
        "ix_task_instance_queued_priority_id",
        "task_instance",
        _ORDER,
        unique=False,
        sqlite_where=sqlite_where,
        postgresql_where=postgresql_where,
    )


def upgrade() -> None:
    with op.batch_alter_table("workflow") as batch_op:
        batch_op.add_column(sa.Column("uuid", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("pull_timeout", sa.Float(), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_workflow_uuid"), ["uuid"])
    # a constant default: no table rewrite on PostgreSQL, a plain ADD COLUMN on SQLite
    op.add_column(
        "task_instance", sa.Column("pull", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column(
        "task", sa.Column("resets", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.drop_index("ix_task_instance_queued_priority_id", table_name="task_instance")
    _claim_order_index(_SQLITE_PUSH, _PG_PUSH)
    op.create_table(
        "taskfarm_worker",
        sa.Column("id", _ID, nullable=False),
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", _ID, nullable=False),
        sa.Column("identity", sa.String(length=200), nullable=True),
        sa.Column("created_date", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_taskfarm_worker")),
        sa.UniqueConstraint("uuid", name=op.f("uq_taskfarm_worker_uuid")),
    )


def downgrade() -> None:
    op.drop_table("taskfarm_worker")
    op.drop_index("ix_task_instance_queued_priority_id", table_name="task_instance")
    with op.batch_alter_table("task_instance") as batch_op:
        batch_op.drop_column("pull")
    with op.batch_alter_table("task") as batch_op:
        batch_op.drop_column("resets")
    # SQLite's table copy rebuilt the other claim-order index without its DESC: again
    op.drop_index("ix_task_instance_workflow_id_status_priority_id", table_name="task_instance")
    op.create_index(
        "ix_task_instance_workflow_id_status_priority_id",
        "task_instance",
        ["workflow_id", "status", sa.column("priority").desc(), "id"],
        unique=False,
    )
    _claim_order_index(_QUEUED, _QUEUED)
    with op.batch_alter_table("workflow") as batch_op:
        batch_op.drop_constraint(op.f("uq_workflow_uuid"), type_="unique")
        batch_op.drop_column("pull_timeout")
        batch_op.drop_column("uuid")
