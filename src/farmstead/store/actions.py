"""Queries behind operator actions on tasks (resume)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, exists, select, update

from farmstead.db.engine import Conn
from farmstead.db.types import db_now
from farmstead.fsm import LIVE_TI
from farmstead.store.bulk import insert_queued, next_batches
from farmstead.store.graph import failed_upstream
from farmstead.store.locks import in_lock_order
from farmstead.store.sql import TASK, TI, dialect, id_in

_LIVE = sorted(s.value for s in LIVE_TI)


@dataclass(frozen=True)
class FailedTask:
    """A task to resume."""

    id: int
    workflow_id: int
    array_id: int
    resources: dict[str, Any] | None
    status: str = "F"


async def lock_failed_tasks(
    conn: Conn, workflow_id: int, limit: int, statuses: Sequence[str] = ("F",)
) -> list[FailedTask]:
    """ERROR_FATAL tasks (or those in `statuses`) of a workflow with no live instance left,
    locked in id order."""
    live = exists().where(and_(TI.c.task_id == TASK.c.id, TI.c.status.in_(_LIVE)))
    # a BLOCKED task re-opens once nothing upstream of it has failed (another workflow's
    # failed task must be resumed first)
    stuck = and_(TASK.c.status == "B", failed_upstream())
    stmt = (
        select(TASK.c.id, TASK.c.workflow_id, TASK.c.array_id, TASK.c.resources, TASK.c.status)
        .where(TASK.c.workflow_id == workflow_id, TASK.c.status.in_(statuses), ~live, ~stuck)
        .order_by(TASK.c.id)
        .limit(limit)
        .with_for_update()
    )
    return [FailedTask(*r) for r in (await conn.execute(stmt)).all()]


async def requeue_tasks(conn: Conn, ids: Sequence[int], held: bool = False) -> None:
    """Fresh tries: QUEUED, attempts counted from now, one more instance on the way.
    `held`: HELD instead, with no instance until their upstream tasks are DONE again."""
    await conn.execute(
        update(TASK)
        .where(id_in(TASK.c.id, ids, dialect(conn)))
        .values(
            status="H" if held else "Q",
            status_date=db_now(),
            attempts_base=TASK.c.num_attempts,
            num_attempts=TASK.c.num_attempts + (0 if held else 1),
            time_finished=None,
            time_started=None,
            # a finished task reset (taskfarm's restart of everything): its DONE try stays
            resets=TASK.c.resets + case((TASK.c.status == "D", 1), else_=0),
        )
        .execution_options(synchronize_session=False)
    )


async def reopen_tasks(conn: Conn, ids: Sequence[int]) -> None:
    """BLOCKED tasks → HELD: they wait on their upstream tasks again (a resume; only tasks
    with no failed upstream are locked for it, `lock_failed_tasks`)."""
    await conn.execute(
        update(TASK)
        .where(id_in(TASK.c.id, ids, dialect(conn)), TASK.c.status == "B")
        .values(status="H", status_date=db_now(), last_error=None, time_finished=None)
        .execution_options(synchronize_session=False)
    )


async def queue_first_instances(conn: Conn, tasks: Sequence[FailedTask]) -> list[int]:
    """A new QUEUED instance per task, each in a new batch of its array (arrays locked by id)."""
    by_array: dict[int, list[FailedTask]] = {}
    for t in tasks:
        by_array.setdefault(t.array_id, []).append(t)
    ids: list[int] = []
    for array_id, members in sorted(by_array.items()):
        first = await next_batches(conn, array_id, len(members))
        ids += await insert_queued(
            conn,
            [
                {
                    "task_id": t.id,
                    "workflow_id": t.workflow_id,
                    "array_id": array_id,
                    "array_batch_num": first + k,
                    "array_step_id": 0,
                    "resources": t.resources,
                }
                for k, t in enumerate(members)
            ],
        )
    return ids


async def refresh_tries(conn: Conn, workflow_id: int) -> int:
    """Unfinished tasks with a live instance: their tries count again from that instance.

    The tasks are locked by id first (store.locks), as every other writer locks them.
    """
    stale = and_(
        TASK.c.workflow_id == workflow_id,
        TASK.c.status.not_in(("D", "F")),
        TASK.c.attempts_base < TASK.c.num_attempts - 1,
    )
    stmt = (
        update(TASK)
        .where(in_lock_order(conn, TASK.c.id, stale))
        .values(attempts_base=TASK.c.num_attempts - 1)
        .execution_options(synchronize_session=False)
    )
    return int((await conn.execute(stmt)).rowcount)  # type: ignore[attr-defined]
