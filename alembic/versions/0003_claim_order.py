"""task_instance.priority and the claim-order indexes; one foreign key for a task's array

- `task_instance.priority`: a copy of its task's priority (a task's priority is set when it is
  submitted and never changes), filled here for existing rows, so a claim walks one index in
  its own order instead of sorting every QUEUED instance by a joined column;
- `ix_task_instance_queued_priority_id`: the QUEUED instances in claim order (partial);
- `ix_task_instance_workflow_id_status_priority_id` replaces `…_workflow_id_status`: the same
  prefix, and one workflow's QUEUED instances in claim order;
- a task's `(array_id, workflow_id)` must be an array's `(id, workflow_id)`: one foreign key
  (one check per inserted task instead of two) that also says the task is in its array's
  workflow; it replaces the two single-column keys it implies.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 11:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUEUED = sa.text("status = 'Q'")


def upgrade() -> None:
    with op.batch_alter_table("task_instance") as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    # only instances of tasks with a non-default priority need a value other than the default
    op.execute(
        "UPDATE task_instance SET priority = "
        "(SELECT task.priority FROM task WHERE task.id = task_instance.task_id) "
        "WHERE task_id IN (SELECT id FROM task WHERE priority <> 0)"
    )
    with op.batch_alter_table("task_instance") as batch_op:
        batch_op.drop_index("ix_task_instance_workflow_id_status")
        batch_op.create_index(
            "ix_task_instance_workflow_id_status_priority_id",
            ["workflow_id", "status", sa.column("priority").desc(), "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_task_instance_queued_priority_id",
            [sa.column("priority").desc(), "id"],
            unique=False,
            sqlite_where=_QUEUED,
            postgresql_where=_QUEUED,
        )
    with op.batch_alter_table("array") as batch_op:
        batch_op.create_unique_constraint(op.f("uq_array_id_workflow_id"), ["id", "workflow_id"])
    with op.batch_alter_table("task") as batch_op:
        batch_op.drop_constraint("fk_task_array_id_array", type_="foreignkey")
        batch_op.drop_constraint("fk_task_workflow_id_workflow", type_="foreignkey")
        batch_op.create_foreign_key(
            op.f("fk_task_array_id_array"),
            "array",
            ["array_id", "workflow_id"],
            ["id", "workflow_id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("task") as batch_op:
        batch_op.drop_constraint("fk_task_array_id_array", type_="foreignkey")
        batch_op.create_foreign_key(
            op.f("fk_task_workflow_id_workflow"), "workflow", ["workflow_id"], ["id"]
        )
        batch_op.create_foreign_key(op.f("fk_task_array_id_array"), "array", ["array_id"], ["id"])
    with op.batch_alter_table("array") as batch_op:
        batch_op.drop_constraint("uq_array_id_workflow_id", type_="unique")
    with op.batch_alter_table("task_instance") as batch_op:
        batch_op.drop_index(
            "ix_task_instance_queued_priority_id",
            sqlite_where=_QUEUED,
            postgresql_where=_QUEUED,
        )
        batch_op.drop_index("ix_task_instance_workflow_id_status_priority_id")
        batch_op.create_index(
            "ix_task_instance_workflow_id_status", ["workflow_id", "status"], unique=False
        )
        batch_op.drop_column("priority")
