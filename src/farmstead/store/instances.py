"""Queries on task instances and their tasks: locks, guarded updates, heartbeats, lookups."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from farmstead.db.types import db_now, seconds_from_now
from farmstead.store.locks import in_lock_order
from farmstead.store.rows import InstanceRow, TaskRow
from farmstead.store.sql import ERRLOG, TASK, TI, WORKFLOW, dialect, id_in


async def lock_instance(session: AsyncSession, ti_id: int) -> InstanceRow | None:
    """Read an instance and lock its row (first of the two locks of a transition)."""
    stmt = (
        select(TI.c.id, TI.c.task_id, TI.c.workflow_id, TI.c.array_id, TI.c.status, TI.c.resources)
        .where(TI.c.id == ti_id)
        .with_for_update()
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else InstanceRow(*row)


async def lock_task(session: AsyncSession, task_id: int) -> TaskRow:
    """Read a task (with its workflow's retry delay) and lock the task row."""
    stmt = (
        select(
            TASK.c.id,
            TASK.c.workflow_id,
            TASK.c.array_id,
            TASK.c.name,
            TASK.c.command,
            TASK.c.status,
            (TASK.c.num_attempts - TASK.c.attempts_base).label("tries"),
            TASK.c.max_attempts,
            TASK.c.resources,
            TASK.c.resource_scales,
            WORKFLOW.c.retry_delay,
            WORKFLOW.c.cancelled_date.is_not(None),
        )
        .join(WORKFLOW, WORKFLOW.c.id == TASK.c.workflow_id)
        .where(TASK.c.id == task_id)
        .with_for_update(of=TASK)
    )
    row: Any = (await session.execute(stmt)).one()
    return TaskRow(*row)


async def heartbeat(
    session: AsyncSession, ti_id: int, increment: float, fields: dict[str, Any]
) -> bool:
    """Extend a RUNNING instance's deadline (one guarded UPDATE, locking only that row, in a
    transaction that holds no other lock); False if it is not RUNNING."""
    stmt = (
        update(TI)
        .where(and_(TI.c.id == ti_id, TI.c.status == "R"))
        .values(report_by_date=seconds_from_now(increment), last_report_date=db_now(), **fields)
        .returning(TI.c.id)
    )
    return (await session.execute(stmt)).first() is not None


async def heartbeat_batch(session: AsyncSession, ids: Sequence[int], increment: float) -> int:
    """Extend the deadline of every LAUNCHED or RUNNING instance in `ids`: one statement.

    The rows are locked in id order first (store.locks), as every other writer locks them.
    """
    live = and_(id_in(TI.c.id, ids, dialect(session)), TI.c.status.in_(("O", "R")))
    stmt = (
        update(TI)
        .where(in_lock_order(session, TI.c.id, live))
        .values(report_by_date=seconds_from_now(increment), last_report_date=db_now())
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def status_of(session: AsyncSession, ti_id: int) -> str | None:
    """The instance's status, or None if there is no such instance."""
    return (await session.execute(select(TI.c.status).where(TI.c.id == ti_id))).scalar()


async def array_instance_id(
    session: AsyncSession, array_id: int, batch_num: int, step_id: int
) -> int | None:
    """The instance that is step `step_id` of batch `batch_num` of array `array_id`."""
    stmt = select(TI.c.id).where(
        TI.c.array_id == array_id,
        TI.c.array_batch_num == batch_num,
        TI.c.array_step_id == step_id,
    )
    return (await session.execute(stmt)).scalar()


async def worker_view(session: AsyncSession, ti_id: int) -> dict[str, Any] | None:
    """What a worker node needs to run an instance: its task's name, command and log dirs."""
    stmt = (
        select(
            TI.c.id,
            TI.c.status,
            TI.c.workflow_id,
            TI.c.task_id,
            TASK.c.name,
            TASK.c.command,
            TI.c.resources,
            TASK.c.resources.label("task_resources"),
        )
        .join(TASK, TASK.c.id == TI.c.task_id)
        .where(TI.c.id == ti_id)
    )
    row = (await session.execute(stmt)).mappings().first()
    return None if row is None else dict(row)


async def error_log(session: AsyncSession, ti_id: int) -> list[tuple[int, Any, str]]:
    """The error-log rows of an instance, oldest first."""
    stmt = (
        select(ERRLOG.c.id, ERRLOG.c.error_time, ERRLOG.c.description)
        .where(ERRLOG.c.task_instance_id == ti_id)
        .order_by(ERRLOG.c.id)
    )
    return [tuple(r) for r in (await session.execute(stmt)).all()]


async def heartbeat_is_fresh(session: AsyncSession, ti_id: int) -> bool | None:
    """Whether the instance's deadline is still ahead (None: no such instance)."""
    stmt = select(TI.c.report_by_date.is_not(None) & (TI.c.report_by_date > db_now())).where(
        TI.c.id == ti_id
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else bool(row[0])
