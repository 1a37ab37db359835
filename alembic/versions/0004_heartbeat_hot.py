"""Heartbeats change no indexed column: report_by_date leaves the indexes; a fillfactor

- `ix_task_instance_status_report_by_date` is dropped: every heartbeat changed one of its
  columns, so PostgreSQL wrote a new entry in each of task_instance's indexes for each row and
  SQLite rewrote the index entry. The deadline sweeps (RUNNING, LAUNCHED) now read the rows
  of their status through a status index (SQLite: `…_status_status_date`; PostgreSQL: the
  partial `uq_task_instance_live_task_id`) and sort those by deadline;
- on PostgreSQL task_instance gets a fillfactor (models.TASK_INSTANCE_FILLFACTOR): pages
  written from now on keep room for the new row versions of heartbeats (HOT updates). Pages
  already written keep their fill until rewritten (VACUUM FULL, CLUSTER), which this does not
  do: it would lock the table for as long as it takes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 14:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the value of models.TASK_INSTANCE_FILLFACTOR when this revision was written
_FILLFACTOR = 85


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    with op.batch_alter_table("task_instance") as batch_op:
        batch_op.drop_index("ix_task_instance_status_report_by_date")
    if _postgresql():
        op.execute(f"ALTER TABLE task_instance SET (fillfactor = {_FILLFACTOR})")


def downgrade() -> None:
    if _postgresql():
        op.execute("ALTER TABLE task_instance RESET (fillfactor)")
    with op.batch_alter_table("task_instance") as batch_op:
        batch_op.create_index(
            "ix_task_instance_status_report_by_date", ["status", "report_by_date"], unique=False
        )
