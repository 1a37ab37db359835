"""baseline

Revision ID: 0001
Revises:
Create Date: 2026-11-22 04:26:02.647828
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import farmstead.db.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("cluster_type_name", sa.String(length=255), nullable=False),
        sa.Column("connection_parameters", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster")),
        sa.UniqueConstraint("name", name=op.f("uq_cluster_name")),
    )
    cluster = sa.table(
        "cluster",
        sa.column("name", sa.String),
        sa.column("cluster_type_name", sa.String),
    )
    # Jobmon worker nodes ask for their cluster by name; its type names the Jobmon plugin
    # they load. "local" is farmstead's own executor.
    op.bulk_insert(
        cluster,
        [
            {"name": name, "cluster_type_name": kind}
            for name, kind in [
                ("local", "multiprocess"),
                ("multiprocess", "multiprocess"),
                ("sequential", "sequential"),
                ("dummy", "dummy"),
                ("slurm", "slurm"),
            ]
        ],
    )
    op.create_table(
        "event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "workflow_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column(
            "entity_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("from_status", sa.String(length=1), nullable=True),
        sa.Column("to_status", sa.String(length=1), nullable=False),
        sa.Column("time", farmstead.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_entity_entity_id", ["entity", "entity_id"], unique=False)
        batch_op.create_index("ix_event_workflow_id_id", ["workflow_id", "id"], unique=False)

    op.create_table(
        "workflow",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("retry_delay", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("cancelled_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow")),
    )
    op.create_table(
        "array",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "workflow_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("max_concurrently_running", sa.Integer(), nullable=False),
        sa.Column("last_batch_num", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflow.id"], name=op.f("fk_array_workflow_id_workflow")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_array")),
    )
    with op.batch_alter_table("array", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_array_workflow_id"), ["workflow_id"], unique=False)

    op.create_table(
        "task",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "workflow_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("array_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=1), nullable=False),
        sa.Column("status_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("num_attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("attempts_base", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "resources",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "resource_scales",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("time_submitted", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("time_started", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("time_finished", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["array_id"], ["array.id"], name=op.f("fk_task_array_id_array")),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflow.id"], name=op.f("fk_task_workflow_id_workflow")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task")),
    )
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_array_id"), ["array_id"], unique=False)
        batch_op.create_index("ix_task_workflow_id_status", ["workflow_id", "status"], unique=False)

    op.create_table(
        "task_instance",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "workflow_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("array_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("array_batch_num", sa.Integer(), nullable=False),
        sa.Column("array_step_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=1), nullable=False),
        sa.Column("status_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submitted_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("report_by_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("available_date", farmstead.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("distributor_id", sa.Text(), nullable=True),
        sa.Column("nodename", sa.String(length=255), nullable=True),
        sa.Column("process_group_id", sa.String(length=64), nullable=True),
        sa.Column(
            "resources",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("wallclock", sa.Float(), nullable=True),
        sa.Column("maxrss", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("cpu", sa.Float(), nullable=True),
        sa.Column("io", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("stdout", sa.Text(), nullable=True),
        sa.Column("stderr", sa.Text(), nullable=True),
        sa.Column("stdout_log", sa.Text(), nullable=True),
        sa.Column("stderr_log", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_task_instance_task_id_task")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_instance")),
    )
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.create_index(
            "ix_task_instance_status_report_by_date", ["status", "report_by_date"], unique=False
        )
        batch_op.create_index(
            "ix_task_instance_status_status_date", ["status", "status_date"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_task_instance_task_id"), ["task_id"], unique=False)
        batch_op.create_index(
            "ix_task_instance_workflow_id_status", ["workflow_id", "status"], unique=False
        )
        batch_op.create_index(
            "uq_task_instance_array_batch_step",
            ["array_id", "array_batch_num", "array_step_id"],
            unique=True,
        )
        batch_op.create_index(
            "uq_task_instance_live_task_id",
            ["task_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('I', 'K', 'O', 'Q', 'R', 'T', 'X')"),
            postgresql_where=sa.text("status IN ('I', 'K', 'O', 'Q', 'R', 'T', 'X')"),
        )

    op.create_table(
        "task_instance_error_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "task_instance_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("error_time", farmstead.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_instance_id"],
            ["task_instance.id"],
            name=op.f("fk_task_instance_error_log_task_instance_id_task_instance"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_instance_error_log")),
    )
    with op.batch_alter_table("task_instance_error_log", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_task_instance_error_log_task_instance_id"),
            ["task_instance_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("task_instance_error_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_instance_error_log_task_instance_id"))

    op.drop_table("task_instance_error_log")
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_task_instance_live_task_id",
            sqlite_where=sa.text("status IN ('I', 'K', 'O', 'Q', 'R', 'T', 'X')"),
            postgresql_where=sa.text("status IN ('I', 'K', 'O', 'Q', 'R', 'T', 'X')"),
        )
        batch_op.drop_index("uq_task_instance_array_batch_step")
        batch_op.drop_index("ix_task_instance_workflow_id_status")
        batch_op.drop_index(batch_op.f("ix_task_instance_task_id"))
        batch_op.drop_index("ix_task_instance_status_status_date")
        batch_op.drop_index("ix_task_instance_status_report_by_date")

    op.drop_table("task_instance")
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_index("ix_task_workflow_id_status")
        batch_op.drop_index(batch_op.f("ix_task_array_id"))

    op.drop_table("task")
    with op.batch_alter_table("array", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_array_workflow_id"))

    op.drop_table("array")
    op.drop_table("workflow")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_workflow_id_id")
        batch_op.drop_index("ix_event_entity_entity_id")

    op.drop_table("event")
    op.drop_table("cluster")
