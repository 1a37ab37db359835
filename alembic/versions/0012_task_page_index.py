"""An index for paging a workflow's tasks by id: (workflow_id, id) on task

The dashboard (and `GET /v3/workflows/{id}/tasks`) read a workflow's tasks a page at a time in
id order, from an id on. With only (workflow_id, status), SQLite sorted every task of the
workflow for each page (a quarter of a second with 1,000,000 tasks). Neither column of the new
index ever changes, so status moves do not touch it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 16:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_task_workflow_id_id", "task", ["workflow_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_task_workflow_id_id", table_name="task")
