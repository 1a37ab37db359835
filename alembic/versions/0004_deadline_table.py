"""task_instance_deadline: heartbeat deadlines in a narrow table of their own

- `task_instance_deadline(task_instance_id, report_by_date, last_report_date)` holds a row for
  each instance in a status with a heartbeat deadline (LAUNCHED, RUNNING), filled here from
  the instances in those statuses; `ix_task_instance_deadline_report_by_date` is how the
  reconciler finds expired deadlines. A heartbeat rewrites that narrow row and its two index
  entries instead of the wide instance row and its seven;
- `task_instance.report_by_date` and `last_report_date` stay, as the instance's record of
  them when it last left those statuses; `ix_task_instance_status_report_by_date` is dropped
  (nothing searches the record).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import farmstead.db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_instance_deadline",
        sa.Column(
            "task_instance_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("report_by_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_report_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_instance_id"],
            ["task_instance.id"],
            name=op.f("fk_task_instance_deadline_task_instance_id_task_instance"),
        ),
        sa.PrimaryKeyConstraint("task_instance_id", name=op.f("pk_task_instance_deadline")),
    )
    op.execute(
        "INSERT INTO task_instance_deadline (task_instance_id, report_by_date, last_report_date) "
        "SELECT id, report_by_date, last_report_date FROM task_instance "
        "WHERE status IN ('O', 'R')"
    )
    op.create_index(
        op.f("ix_task_instance_deadline_report_by_date"),
        "task_instance_deadline",
        ["report_by_date"],
        unique=False,
    )
    op.drop_index("ix_task_instance_status_report_by_date", table_name="task_instance")


def downgrade() -> None:
    # the live deadlines back into the instances' own columns
    for column in ("report_by_date", "last_report_date"):
        op.execute(
            f"UPDATE task_instance SET {column} = (SELECT d.{column} "
            "FROM task_instance_deadline AS d WHERE d.task_instance_id = task_instance.id) "
            "WHERE id IN (SELECT task_instance_id FROM task_instance_deadline)"
        )
    op.create_index(
        "ix_task_instance_status_report_by_date",
        "task_instance",
        ["status", "report_by_date"],
        unique=False,
    )
    op.drop_index(
        op.f("ix_task_instance_deadline_report_by_date"), table_name="task_instance_deadline"
    )
    op.drop_table("task_instance_deadline")
