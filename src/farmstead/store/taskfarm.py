"""Queries of the taskfarm face: runs by uuid, task n of a run, progress, workers.

A run is a workflow with a uuid; its tasks are one array whose first batch holds task n's first
instance at step n, so task n is found through the array's (batch, step) index, and a run's
number of tasks is its first batch's last step + 1 (an index lookup, not a count).
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    func,
    literal_column,
    select,
    update,
)

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now
from farmstead.fsm import LIVE_TI
from farmstead.store.bulk import Sweep
from farmstead.store.sql import ARRAY, DEADLINE, TASK, TF_WORKER, TI, WORKFLOW, dialect

_LIVE = sorted(s.value for s in LIVE_TI)


@dataclass(frozen=True)
class Run:
    """A taskfarm run: its workflow, array, number of tasks and update timeout."""

    id: int
    uuid: str
    array_id: int
    num_tasks: int
    timeout: float


@dataclass(frozen=True)
class TaskAt:
    """Task n of a run, with its live instance if it has one."""

    id: int
    number: int
    status: str
    progress: float
    ti_id: int | None
    ti_status: str | None
    reporter: str | None


def _runs() -> Any:
    first = TI.alias("first")
    steps = (
        select(func.max(first.c.array_step_id) + 1)
        .where(first.c.array_id == ARRAY.c.id, first.c.array_batch_num == 1)
        .scalar_subquery()
    )
    return (
        select(
            WORKFLOW.c.id,
            WORKFLOW.c.uuid,
            ARRAY.c.id,
            func.coalesce(steps, 0),
            WORKFLOW.c.pull_timeout,
        )
        .join(ARRAY, ARRAY.c.workflow_id == WORKFLOW.c.id)
        .where(WORKFLOW.c.uuid.is_not(None))
    )


def _run_by_uuid() -> Any:
    return _runs().where(WORKFLOW.c.uuid == bindparam("uuid", type_=String()))


async def run_by_uuid(conn: Conn, uuid: str) -> Run | None:
    """The run with this uuid."""
    prepared = prepare(dialect(conn), "taskfarm_run", _run_by_uuid)
    row = (await conn.run(prepared, {"uuid": uuid})).first()
    return None if row is None else Run(*row)


async def runs(conn: Conn) -> list[Run]:
    """Every run, oldest first."""
    return [Run(*r) for r in (await conn.execute(_runs().order_by(WORKFLOW.c.id))).all()]


async def tallies(conn: Conn, workflow_id: int) -> tuple[dict[str, int], float]:
    """A run's task counts by status letter and the sum of their progress: one scan."""
    stmt = (
        select(TASK.c.status, func.count(), func.sum(TASK.c.progress))
        .where(TASK.c.workflow_id == workflow_id)
        .group_by(TASK.c.status)
    )
    rows = (await conn.execute(stmt)).all()
    return {s: int(n) for s, n, _ in rows}, float(sum(p or 0.0 for *_, p in rows))


def _first_try() -> Any:
    """The task whose first instance is step `number` of the array's first batch."""
    return (
        select(TI.c.task_id)
        .where(
            TI.c.array_id == bindparam("array_id", type_=BigInteger()),
            TI.c.array_batch_num == 1,
            TI.c.array_step_id == bindparam("number", type_=Integer()),
        )
        .scalar_subquery()
    )


#: the live statuses written into the statement: a prepared statement has no expanding IN
_LIVE_SQL: list[Any] = [literal_column(f"'{s}'") for s in _LIVE]
_TASK_AT = (TASK.c.id, TASK.c.status, TASK.c.progress, TI.c.id, TI.c.status, TI.c.reporter)


def _task_at() -> Any:
    live = and_(TI.c.task_id == TASK.c.id, TI.c.status.in_(_LIVE_SQL))
    return select(*_TASK_AT).select_from(TASK.outerjoin(TI, live)).where(TASK.c.id == _first_try())


def _task_at_locked() -> Any:
    return (
        select(*_TASK_AT)
        .select_from(TI)
        .join(TASK, TASK.c.id == TI.c.task_id)
        .where(TI.c.task_id == _first_try(), TI.c.status.in_(_LIVE_SQL))
        .with_for_update(of=[TI, TASK])
    )


async def task_at(conn: Conn, array_id: int, number: int, lock: bool = False) -> TaskAt | None:
    """Task `number` of a run's array and its live instance (if any): one prepared SELECT.

    `lock`: only a task with a live instance, both rows locked, the instance first (the
    global lock order, store.locks); None when it has no live instance."""
    name = dialect(conn)
    if lock:
        prepared = prepare(name, "taskfarm_task_at_locked", _task_at_locked)
    else:
        prepared = prepare(name, "taskfarm_task_at", _task_at)
    row = (await conn.run(prepared, {"array_id": array_id, "number": number})).first()
    if row is None:
        return None
    return TaskAt(row[0], number, row[1], float(row[2] or 0.0), row[3], row[4], row[5])


async def task_number(conn: Conn, task_id: int) -> int:
    """A run's task's number: the step of its first instance."""
    stmt = select(TI.c.array_step_id).where(TI.c.task_id == task_id, TI.c.array_batch_num == 1)
    return int((await conn.execute(stmt)).scalar_one())


def _set_progress() -> Any:
    return (
        update(TASK)
        .where(TASK.c.id == bindparam("task_id", type_=BigInteger()))
        .values(progress=bindparam("percent", type_=Float()))
        .returning(TASK.c.status)
    )


async def set_progress(conn: Conn, task_id: int, percent: float) -> str:
    """A task's percent done; its status now."""
    prepared = prepare(dialect(conn), "taskfarm_progress", _set_progress)
    return str((await conn.run(prepared, {"task_id": task_id, "percent": percent})).scalar())


async def reset_progress(conn: Conn, workflow_id: int) -> int:
    """Every task of a run back to 0 percent done."""
    stmt = (
        update(TASK)
        .where(TASK.c.workflow_id == workflow_id, TASK.c.progress != 0)
        .values(progress=0.0)
        .execution_options(synchronize_session=False)
    )
    return int((await conn.execute(stmt)).rowcount)  # type: ignore[attr-defined]


def computing_expired(workflow_id: int) -> tuple[Sweep, Sweep]:
    """A run's instances whose update deadline has passed: RUNNING ones past the deadline in
    their deadline row, and TRIAGING ones (the reconciler found them past it already)."""
    running = and_(
        TI.c.workflow_id == workflow_id,
        TI.c.status == "R",
        DEADLINE.c.report_by_date <= db_now(),
    )
    triaging = and_(TI.c.workflow_id == workflow_id, TI.c.status == "T")
    return (
        Sweep(running, DEADLINE.c.report_by_date, deadline=True),
        Sweep(triaging, TI.c.status_date),
    )


async def forget_uuid(conn: Conn, workflow_id: int) -> None:
    """A deleted run: no longer a run on taskfarm's API (the workflow stays, cancelled)."""
    await conn.execute(update(WORKFLOW).where(WORKFLOW.c.id == workflow_id).values(uuid=None))


async def insert_worker(
    conn: Conn, uuid: str, hostname: str, pid: int, identity: str | None
) -> int:
    """Register a worker; its id."""
    stmt = TF_WORKER.insert().values(
        uuid=uuid, hostname=hostname, pid=pid, identity=identity, created_date=db_now()
    )
    return int((await conn.execute(stmt.returning(TF_WORKER.c.id))).scalar_one())


async def worker(conn: Conn, uuid: str) -> dict[str, Any] | None:
    """A registered worker by uuid."""
    stmt = select(TF_WORKER).where(TF_WORKER.c.uuid == uuid)
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else dict(row)
