"""Scheduling (issue 12): queues, agents, running counters, task bookkeeping

- `queue`: PyFarm's job queues, a tree under an implicit root; `workflow.queue_id` and the
  workflow's own knobs (priority, weight, minimum and maximum agents);
- `agent`: every claimer, with a heartbeat; `task_instance.agent_id` (who claimed it) and
  `avoid_agent_id` (a retry is not offered to the agent its try failed on);
- `array_count`: per array, QUEUED instances and instances holding an agent, kept by triggers
  on task_instance in the transaction of every move, whatever statement makes it;
- `task.attempts` (times handed to an agent) and `task.failures` (failed tries), kept by the
  same triggers.

PostgreSQL: statement-level triggers with transition tables (one aggregated upsert per
statement, array rows locked in id order, so two multi-array statements cannot deadlock on
them). SQLite: row-level triggers (one writer at a time: no lock order to keep).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import farmstead.db.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = farmstead.db.types.UTCDateTime(timezone=True)
_ACTIVE = sa.text("queued > 0 OR assigned > 0")
_ASSIGNED = "('I', 'O', 'R', 'T', 'K')"
_FAILED = "('E', 'U', 'Z', 'W', 'X')"
_FATAL_FROM = "('O', 'R', 'T')"

_UPSERT = """
      ON CONFLICT (array_id) DO UPDATE
        SET queued = c.queued + excluded.queued, assigned = c.assigned + excluded.assigned;"""
_MOVED = """(SELECT n.array_id, n.workflow_id, n.task_id, o.status AS was, n.status AS now
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status <> n.status) m"""
_PG_FUNCTION = f"""
CREATE FUNCTION farmstead_count_instances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    INSERT INTO array_count AS c (array_id, workflow_id, queued, assigned)
      SELECT array_id, workflow_id, q, a FROM (
        SELECT array_id, min(workflow_id) AS workflow_id,
               count(*) FILTER (WHERE now = 'Q') - count(*) FILTER (WHERE was = 'Q') AS q,
               count(*) FILTER (WHERE now IN {_ASSIGNED})
                 - count(*) FILTER (WHERE was IN {_ASSIGNED}) AS a
        FROM {_MOVED} GROUP BY array_id
      ) d WHERE q <> 0 OR a <> 0 ORDER BY array_id{_UPSERT}
    UPDATE task t SET attempts = t.attempts + m.a, failures = t.failures + m.f
      FROM (
        SELECT task_id,
               count(*) FILTER (WHERE was = 'Q' AND now IN ('I', 'R')) AS a,
               count(*) FILTER (
                 WHERE now IN {_FAILED} OR (now = 'F' AND was IN {_FATAL_FROM})
               ) AS f
        FROM {_MOVED} GROUP BY task_id
      ) m
      WHERE t.id = m.task_id AND (m.a > 0 OR m.f > 0);
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO array_count AS c (array_id, workflow_id, queued, assigned)
      SELECT array_id, min(workflow_id), count(*) FILTER (WHERE status = 'Q'),
             count(*) FILTER (WHERE status IN {_ASSIGNED})
      FROM new_rows GROUP BY array_id ORDER BY array_id{_UPSERT}
  ELSE
    INSERT INTO array_count AS c (array_id, workflow_id, queued, assigned)
      SELECT array_id, min(workflow_id), -count(*) FILTER (WHERE status = 'Q'),
             -count(*) FILTER (WHERE status IN {_ASSIGNED})
      FROM old_rows GROUP BY array_id ORDER BY array_id{_UPSERT}
  END IF;
  RETURN NULL;
END $$
"""
_PG_TRIGGERS = [
    "CREATE TRIGGER farmstead_count_inserted AFTER INSERT ON task_instance "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION farmstead_count_instances()",
    "CREATE TRIGGER farmstead_count_moved AFTER UPDATE ON task_instance "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION farmstead_count_instances()",
    "CREATE TRIGGER farmstead_count_deleted AFTER DELETE ON task_instance "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION farmstead_count_instances()",
]


def _sqlite_upsert(row: str, sign: str) -> str:
    return (
        "INSERT INTO array_count (array_id, workflow_id, queued, assigned) VALUES "
        f"({row}.array_id, {row}.workflow_id, {sign}({row}.status = 'Q'), "
        f"{sign}({row}.status IN {_ASSIGNED})) "
        "ON CONFLICT (array_id) DO UPDATE SET queued = queued + excluded.queued, "
        "assigned = assigned + excluded.assigned;"
    )


_SQLITE_TRIGGERS = [
    "CREATE TRIGGER farmstead_count_inserted AFTER INSERT ON task_instance "
    f"WHEN NEW.status = 'Q' OR NEW.status IN {_ASSIGNED} "
    f"BEGIN {_sqlite_upsert('NEW', '+')} END",
    "CREATE TRIGGER farmstead_count_deleted AFTER DELETE ON task_instance "
    f"WHEN OLD.status = 'Q' OR OLD.status IN {_ASSIGNED} "
    f"BEGIN {_sqlite_upsert('OLD', '-')} END",
    "CREATE TRIGGER farmstead_count_moved AFTER UPDATE OF status ON task_instance "
    "WHEN (OLD.status = 'Q') <> (NEW.status = 'Q') "
    f"OR (OLD.status IN {_ASSIGNED}) <> (NEW.status IN {_ASSIGNED}) "
    "BEGIN INSERT INTO array_count (array_id, workflow_id, queued, assigned) VALUES "
    "(NEW.array_id, NEW.workflow_id, (NEW.status = 'Q') - (OLD.status = 'Q'), "
    f"(NEW.status IN {_ASSIGNED}) - (OLD.status IN {_ASSIGNED})) "
    "ON CONFLICT (array_id) DO UPDATE SET queued = queued + excluded.queued, "
    "assigned = assigned + excluded.assigned; END",
    "CREATE TRIGGER farmstead_count_attempts AFTER UPDATE OF status ON task_instance "
    "WHEN OLD.status = 'Q' AND NEW.status IN ('I', 'R') "
    "BEGIN UPDATE task SET attempts = attempts + 1 WHERE id = NEW.task_id; END",
    "CREATE TRIGGER farmstead_count_failures AFTER UPDATE OF status ON task_instance "
    f"WHEN OLD.status <> NEW.status AND (NEW.status IN {_FAILED} "
    f"OR (NEW.status = 'F' AND OLD.status IN {_FATAL_FROM})) "
    "BEGIN UPDATE task SET failures = failures + 1 WHERE id = NEW.task_id; END",
]
_SQLITE_TRIGGER_NAMES = [
    "farmstead_count_inserted",
    "farmstead_count_deleted",
    "farmstead_count_moved",
    "farmstead_count_attempts",
    "farmstead_count_failures",
]

_BACKFILL = f"""
INSERT INTO array_count (array_id, workflow_id, queued, assigned)
SELECT a.id, a.workflow_id,
       (SELECT count(*) FROM task_instance i WHERE i.array_id = a.id AND i.status = 'Q'),
       (SELECT count(*) FROM task_instance i WHERE i.array_id = a.id
          AND i.status IN {_ASSIGNED})
FROM "array" a
"""


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "queue",
        sa.Column("id", _ID, nullable=False),
        sa.Column("parent_id", _ID, nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("weight", sa.Float(), server_default=sa.text("10"), nullable=False),
        sa.Column("minimum_agents", sa.Integer(), nullable=True),
        sa.Column("maximum_agents", sa.Integer(), nullable=True),
        sa.Column("created_date", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["queue.id"], name=op.f("fk_queue_parent_id_queue")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue")),
        sa.UniqueConstraint("parent_id", "name", name=op.f("uq_queue_parent_id_name")),
        sa.UniqueConstraint("path", name=op.f("uq_queue_path")),
    )
    op.create_table(
        "agent",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("pid", _ID, nullable=True),
        sa.Column("slots", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("identity", sa.String(length=200), nullable=True),
        sa.Column("created_date", _TIME, nullable=False),
        sa.Column("last_seen_date", _TIME, nullable=False),
        sa.Column("last_claim_date", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent")),
    )
    op.create_index(op.f("ix_agent_last_seen_date"), "agent", ["last_seen_date"], unique=False)
    op.create_table(
        "array_count",
        sa.Column("array_id", _ID, autoincrement=False, nullable=False),
        sa.Column("workflow_id", _ID, nullable=False),
        sa.Column("queued", _ID, server_default=sa.text("0"), nullable=False),
        sa.Column("assigned", _ID, server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("array_id", name=op.f("pk_array_count")),
    )
    op.create_index(
        "ix_array_count_active_workflow_id",
        "array_count",
        ["workflow_id"],
        unique=False,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    with op.batch_alter_table("workflow") as batch_op:
        batch_op.add_column(sa.Column("queue_id", _ID, nullable=True))
        for name, type_, default in (
            ("priority", sa.Integer(), "0"),
            ("weight", sa.Float(), "10"),
        ):
            batch_op.add_column(
                sa.Column(name, type_, server_default=sa.text(default), nullable=False)
            )
        batch_op.add_column(sa.Column("minimum_agents", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("maximum_agents", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_workflow_queue_id"), ["queue_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_workflow_queue_id_queue"), "queue", ["queue_id"], ["id"]
        )
    # constant defaults: no table rewrite on PostgreSQL, a plain ADD COLUMN on SQLite (no
    # table copy, which would rebuild the claim-order indexes without their DESC)
    for name in ("attempts", "failures"):
        op.add_column(
            "task", sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    op.add_column("task_instance", sa.Column("agent_id", _ID, nullable=True))
    op.add_column("task_instance", sa.Column("avoid_agent_id", _ID, nullable=True))
    op.execute(_BACKFILL)
    if sqlite:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    else:
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        for name in (
            "farmstead_count_inserted",
            "farmstead_count_moved",
            "farmstead_count_deleted",
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON task_instance")
        op.execute("DROP FUNCTION IF EXISTS farmstead_count_instances()")
    op.drop_column("task_instance", "avoid_agent_id")
    op.drop_column("task_instance", "agent_id")
    op.drop_column("task", "failures")
    op.drop_column("task", "attempts")
    with op.batch_alter_table("workflow") as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_workflow_queue_id_queue"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_workflow_queue_id"))
        for name in ("maximum_agents", "minimum_agents", "weight", "priority", "queue_id"):
            batch_op.drop_column(name)
    op.drop_index("ix_array_count_active_workflow_id", table_name="array_count")
    op.drop_table("array_count")
    op.drop_index(op.f("ix_agent_last_seen_date"), table_name="agent")
    op.drop_table("agent")
    op.drop_table("queue")
