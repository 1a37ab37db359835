"""Task counts: per array, how many tasks are in each status, kept by triggers on task

- `task_count (array_id, status, workflow_id, n)`: kept by triggers on task in the transaction
  of every insert, status move and delete, whatever statement makes it. A workflow's counts by
  status are one indexed read summed over its arrays (`ix_task_count_workflow_id`), never a
  scan of its tasks. Per array, not per workflow: the lock footprint of `array_count` (0008).

PostgreSQL: statement-level triggers with transition tables (one aggregated upsert per
statement, counter rows locked in (array_id, status) order, so two multi-array statements
cannot deadlock on them). Each first locks the `array_count` rows of its arrays (in array_id
order): a transaction touches an array's task_count rows only while it holds the array's
array_count row, whichever of task and task_instance it writes first, so the new rows add no
wait cycle (without that lock, a claim, whose one statement fires its task trigger before its
instance trigger, and a transition, which writes its instance first, deadlock on the two).
Every array with tasks has an array_count row to lock (made here, and by the insert trigger).
SQLite: row-level triggers (one writer at a time: no lock order to keep). Rows are never
deleted: a count that drops to 0 stays, and readers skip it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_UPSERT = """
      ON CONFLICT (array_id, status) DO UPDATE SET n = c.n + excluded.n;"""
#: the array_count rows of the arrays a statement counts tasks in, locked in array_id order
#: before any task_count row: every transaction then holds an array's array_count row before
#: it touches the array's task_count rows, whichever of task and task_instance it writes first
#: (a claim's one statement fires its task trigger first, a transition its instance trigger
#: first), so the task_count rows add no wait, and no wait cycle, of their own
_LOCK_ARRAYS = """
    PERFORM 1 FROM array_count WHERE array_id IN ({arrays})
      ORDER BY array_id FOR NO KEY UPDATE;"""
_MOVED = "FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status <> n.status"
_LOCK_MOVED = _LOCK_ARRAYS.format(arrays=f"SELECT n.array_id {_MOVED}").replace("\n", "\n  ")
_LOCK_NEW = _LOCK_ARRAYS.format(arrays="SELECT array_id FROM new_rows")
_LOCK_OLD = _LOCK_ARRAYS.format(arrays="SELECT array_id FROM old_rows")
# UPDATE: most updates of a task move no status (progress, attempts and failures, errors):
# they end after one read of the transition tables; a move within one array (a transition,
# a claim) locks its array_count row by key
_PG_FUNCTION = f"""
CREATE FUNCTION farmstead_count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    SELECT min(n.array_id), max(n.array_id) INTO lo, hi {_MOVED};
    IF lo IS NULL THEN
      RETURN NULL;
    ELSIF lo = hi THEN
      PERFORM 1 FROM array_count WHERE array_id = lo FOR NO KEY UPDATE;
    ELSE{_LOCK_MOVED}
    END IF;
    INSERT INTO task_count AS c (array_id, status, workflow_id, n)
      SELECT array_id, status, min(workflow_id), sum(d) FROM (
        SELECT n.array_id, n.workflow_id, v.status, v.d
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        CROSS JOIN LATERAL (VALUES (o.status, -1), (n.status, 1)) v (status, d)
        WHERE o.status <> n.status
      ) m GROUP BY array_id, status HAVING sum(d) <> 0 ORDER BY array_id, status{_UPSERT}
  ELSIF TG_OP = 'INSERT' THEN
    -- every array with tasks has its array_count row (one with only HELD tasks has no
    -- instance yet to make it), so that row can be locked first
    INSERT INTO array_count (array_id, workflow_id)
      SELECT array_id, min(workflow_id) FROM new_rows GROUP BY array_id ORDER BY array_id
      ON CONFLICT (array_id) DO NOTHING;{_LOCK_NEW}
    INSERT INTO task_count AS c (array_id, status, workflow_id, n)
      SELECT array_id, status, min(workflow_id), count(*)
      FROM new_rows GROUP BY array_id, status ORDER BY array_id, status{_UPSERT}
  ELSE{_LOCK_OLD}
    INSERT INTO task_count AS c (array_id, status, workflow_id, n)
      SELECT array_id, status, min(workflow_id), -count(*)
      FROM old_rows GROUP BY array_id, status ORDER BY array_id, status{_UPSERT}
  END IF;
  RETURN NULL;
END $$
"""
_PG_TRIGGERS = [
    "CREATE TRIGGER farmstead_count_tasks_inserted AFTER INSERT ON task "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION farmstead_count_tasks()",
    "CREATE TRIGGER farmstead_count_tasks_moved AFTER UPDATE ON task "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION farmstead_count_tasks()",
    "CREATE TRIGGER farmstead_count_tasks_deleted AFTER DELETE ON task "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION farmstead_count_tasks()",
]
_PG_TRIGGER_NAMES = [
    "farmstead_count_tasks_inserted",
    "farmstead_count_tasks_moved",
    "farmstead_count_tasks_deleted",
]


def _sqlite_upsert(row: str, delta: int) -> str:
    return (
        "INSERT INTO task_count (array_id, status, workflow_id, n) VALUES "
        f"({row}.array_id, {row}.status, {row}.workflow_id, {delta}) "
        "ON CONFLICT (array_id, status) DO UPDATE SET n = n + excluded.n;"
    )


# trigger names are per database on SQLite: distinct from 0008's on task_instance
_SQLITE_TRIGGERS = [
    "CREATE TRIGGER farmstead_count_tasks_inserted AFTER INSERT ON task "
    f"BEGIN {_sqlite_upsert('NEW', 1)} END",
    "CREATE TRIGGER farmstead_count_tasks_deleted AFTER DELETE ON task "
    f"BEGIN {_sqlite_upsert('OLD', -1)} END",
    "CREATE TRIGGER farmstead_count_tasks_moved AFTER UPDATE OF status ON task "
    "WHEN OLD.status <> NEW.status "
    f"BEGIN {_sqlite_upsert('OLD', -1)} {_sqlite_upsert('NEW', 1)} END",
]
_SQLITE_TRIGGER_NAMES = [
    "farmstead_count_tasks_inserted",
    "farmstead_count_tasks_deleted",
    "farmstead_count_tasks_moved",
]

_BACKFILL = """
INSERT INTO task_count (array_id, status, workflow_id, n)
SELECT array_id, status, min(workflow_id), count(*) FROM task GROUP BY array_id, status
"""
#: the array_count rows the PostgreSQL triggers lock first, for arrays that have none yet
_BACKFILL_ARRAYS = """
INSERT INTO array_count (array_id, workflow_id)
SELECT a.id, a.workflow_id FROM "array" a
WHERE NOT EXISTS (SELECT 1 FROM array_count c WHERE c.array_id = a.id)
"""


def upgrade() -> None:
    op.create_table(
        "task_count",
        sa.Column("array_id", _ID, autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=1), nullable=False),
        sa.Column("workflow_id", _ID, nullable=False),
        sa.Column("n", _ID, server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("array_id", "status", name=op.f("pk_task_count")),
    )
    op.create_index(op.f("ix_task_count_workflow_id"), "task_count", ["workflow_id"])
    # the triggers first, then the backfill, in the same transaction: on PostgreSQL creating
    # a trigger locks out writes to task until the commit, so the backfill's snapshot (taken
    # after it) holds every task written before, and every later write is counted by them
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    else:
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
        op.execute(_BACKFILL_ARRAYS)
    op.execute(_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        for name in _PG_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON task")
        op.execute("DROP FUNCTION IF EXISTS farmstead_count_tasks()")
    op.drop_index(op.f("ix_task_count_workflow_id"), table_name="task_count")
    op.drop_table("task_count")
