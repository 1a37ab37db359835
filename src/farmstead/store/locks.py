"""The one global order in which farmstead takes row locks, so transactions never deadlock.

Every transaction that may WAIT for a row lock takes its locks in this order:

1. task instances, by id (then the deadline rows of those it moves, by id: a mover holds an
   instance's row before it touches that instance's deadline row, and the batch heartbeat,
   which locks no instance, takes deadline rows in id order; store.deadlines);
2. tasks, by id;
3. arrays, by id (retries and resumes reserve batch numbers on their array's row).

It never waits for a row of an earlier kind, or a lower id, than one it already holds, so no
cycle of waits can form. Rows a statement takes with SKIP LOCKED may come in any order (a sweep
follows its index, a claim its priorities): a skip never waits, and what such a transaction may
wait for afterwards (an array row) comes later in the order than anything it holds.

PostgreSQL locks the rows of an `UPDATE … WHERE id IN (…)` in whatever order its plan visits
them (a bitmap scan: physical order), so a set-based UPDATE of rows not yet locked first locks
them in id order in a sub-select (`in_lock_order`). SQLite has no row locks (one writer at a
time): these helpers leave its statements as they are.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select

from farmstead.db.engine import Conn
from farmstead.store.sql import TASK, TI, WORKFLOW, dialect, id_in, report_by, with_deadline


def in_lock_order(
    conn: Conn, column: ColumnElement[Any], where: ColumnElement[bool]
) -> ColumnElement[bool]:
    """`where` for an UPDATE of `column`'s table that first locks the matching rows by id.

    On PostgreSQL: `UPDATE … FROM (SELECT column … WHERE where ORDER BY column FOR UPDATE) AS
    locked WHERE column = locked.column`, one statement: the sub-select locks in id order
    (re-checking `where` on a row it waited for), then the UPDATE writes only rows it holds.
    """
    if dialect(conn) != "postgresql":
        return where
    locked = select(column).where(where).order_by(column).with_for_update().subquery("locked")
    return column == locked.c[0]


async def wait_briefly(conn: Conn, seconds: float) -> None:
    """In this transaction, give up on a lock not granted within `seconds` (PostgreSQL: an
    error, lock_not_available): for a statement that may take its locks in any order, so it
    leaves any wait cycle long before PostgreSQL looks for deadlocks (deadlock_timeout, 1 s
    by default) and the other transactions in it go on."""
    if dialect(conn) == "postgresql":
        await conn.execute(
            select(func.set_config("lock_timeout", f"{int(seconds * 1000)}ms", True))
        )


@dataclass(frozen=True)
class LockedTask:
    """A task locked for a set-based move, with its workflow's retry settings."""

    status: str
    tries: int  # tries used since the last resume
    max_attempts: int
    resource_scales: dict[str, float] | None
    retry_delay: float
    cancelled: bool


async def lock_tasks(conn: Conn, ids: Sequence[int]) -> dict[int, LockedTask]:
    """Lock tasks `ids` in id order (the second step of the order), waiting; read them."""
    if not ids:
        return {}
    stmt = (
        select(
            TASK.c.id,
            TASK.c.status,
            (TASK.c.num_attempts - TASK.c.attempts_base).label("tries"),
            TASK.c.max_attempts,
            TASK.c.resource_scales,
            WORKFLOW.c.retry_delay,
            WORKFLOW.c.cancelled_date.is_not(None),
        )
        .join(WORKFLOW, WORKFLOW.c.id == TASK.c.workflow_id)
        .where(id_in(TASK.c.id, sorted(set(ids)), dialect(conn)))
        .order_by(TASK.c.id)
        .with_for_update(of=TASK)
    )
    return {int(r[0]): LockedTask(*r[1:]) for r in (await conn.execute(stmt)).all()}


#: the instance columns a set-based move reads
INSTANCE_COLUMNS = (
    TI.c.id,
    TI.c.status,
    TI.c.task_id,
    TI.c.workflow_id,
    TI.c.array_id,
    TI.c.resources,
)


def instances_by_id(where: ColumnElement[bool], limit: int | None) -> Any:
    """Lock the instances matching `where` (instance columns only) in id order; read them.

    Their deadline rows are read, not locked: a move waits for them later (store.deadlines).
    """
    stmt = (
        select(*INSTANCE_COLUMNS, *report_by())
        .select_from(with_deadline())
        .where(where)
        .order_by(TI.c.id)
        .with_for_update(of=TI)
    )
    return stmt.limit(limit) if limit else stmt
