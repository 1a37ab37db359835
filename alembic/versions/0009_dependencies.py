"""Dependencies (issue 12, part 3): edges between tasks and between workflows

- `task_edge (downstream_id, upstream_id)`: a task runs only once its upstream task is DONE
  (edges by name within a submission; element i on element i of another workflow's array);
- `workflow_edge (downstream_workflow_id, upstream_workflow_id)`: every task of the downstream
  workflow waits for every task of the upstream one (all of an array).

Tasks waiting on upstream tasks are HELD ('H', no instance yet); a task whose upstream ended
ERROR_FATAL is BLOCKED ('B'). Both are new task status letters: the column is String(1), so
there is nothing to alter for them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "task_edge",
        sa.Column("downstream_id", _ID, nullable=False),
        sa.Column("upstream_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["downstream_id"], ["task.id"], name=op.f("fk_task_edge_downstream_id_task")
        ),
        sa.ForeignKeyConstraint(
            ["upstream_id"], ["task.id"], name=op.f("fk_task_edge_upstream_id_task")
        ),
        sa.PrimaryKeyConstraint("downstream_id", "upstream_id", name=op.f("pk_task_edge")),
    )
    op.create_index(op.f("ix_task_edge_upstream_id"), "task_edge", ["upstream_id"])
    op.create_table(
        "workflow_edge",
        sa.Column("downstream_workflow_id", _ID, nullable=False),
        sa.Column("upstream_workflow_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["downstream_workflow_id"],
            ["workflow.id"],
            name=op.f("fk_workflow_edge_downstream_workflow_id_workflow"),
        ),
        sa.ForeignKeyConstraint(
            ["upstream_workflow_id"],
            ["workflow.id"],
            name=op.f("fk_workflow_edge_upstream_workflow_id_workflow"),
        ),
        sa.PrimaryKeyConstraint(
            "downstream_workflow_id", "upstream_workflow_id", name=op.f("pk_workflow_edge")
        ),
    )
    op.create_index(
        op.f("ix_workflow_edge_upstream_workflow_id"), "workflow_edge", ["upstream_workflow_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_workflow_edge_upstream_workflow_id"), table_name="workflow_edge")
    op.drop_table("workflow_edge")
    op.drop_index(op.f("ix_task_edge_upstream_id"), table_name="task_edge")
    op.drop_table("task_edge")
