"""Queries on task instances and their tasks: locks, guarded updates, heartbeats, lookups."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, bindparam, exists, select, update

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now, seconds_from_now
from farmstead.store.rows import InstanceRow, TaskRow
from farmstead.store.sql import (
    DEADLINE,
    ERRLOG,
    TASK,
    TI,
    WORKFLOW,
    dialect,
    ids_placeholder,
    ids_value,
    report_by,
    with_deadline,
)


def _lock_pair() -> Any:
    return (
        select(
            TI.c.id,
            TI.c.task_id,
            TI.c.workflow_id,
            TI.c.array_id,
            TI.c.status,
            TI.c.resources,
            TI.c.reporter,
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
        .select_from(TI)
        .join(TASK, TASK.c.id == TI.c.task_id)
        .join(WORKFLOW, WORKFLOW.c.id == TASK.c.workflow_id)
        .where(TI.c.id == bindparam("ti_id"))
        .with_for_update(of=[TI, TASK])
    )


async def lock_pair(conn: Conn, ti_id: int) -> tuple[InstanceRow, TaskRow] | None:
    """Read an instance and its task, with its workflow's retry settings, and lock both rows:
    one statement, one round trip. PostgreSQL locks the rows of `FOR UPDATE OF` in the order
    of the FROM list: the instance, then its task (the global lock order, store.locks)."""
    prepared = prepare(dialect(conn), "lock_pair", _lock_pair)
    row = (await conn.run(prepared, {"ti_id": ti_id})).first()
    if row is None:
        return None
    return InstanceRow(*row[:7]), TaskRow(*row[7:])


_HEARTBEAT_FIELDS = ("distributor_id", "stdout", "stderr")
_DL_ID = DEADLINE.c.task_instance_id


def _new_deadline() -> dict[str, Any]:
    return {
        "report_by_date": seconds_from_now(bindparam("increment", type_=Float())),
        "last_report_date": db_now(),
    }


def _heartbeat(sent: tuple[str, ...], name: str, guarded: bool = False) -> Any:
    running: tuple[Any, ...] = (TI.c.id == bindparam("ti_id"), TI.c.status == "R")
    if guarded:  # only the worker that started it (store.instances.owner_of)
        running += (TI.c.reporter.is_(None) | (TI.c.reporter == bindparam("reporter")),)
    if not sent:  # the deadline row only, if the instance is RUNNING (no lock on the instance)
        return (
            update(DEADLINE)
            .where(bindparam("ti_id") == _DL_ID, exists().where(*running))
            .values(_new_deadline())
            .returning(_DL_ID)
        )
    # the instance first, then its deadline row: the lock order (store.deadlines)
    ti = (
        update(TI)
        .where(*running)
        .values({k: bindparam(f"v_{k}", type_=TI.c[k].type) for k in sent})
        .returning(TI.c.id)
    )
    if name != "postgresql":
        return ti
    mine = ti.cte("mine")
    return (
        update(DEADLINE)
        .where(_DL_ID.in_(select(mine.c.id)))
        .values(_new_deadline())
        .returning(_DL_ID)
    )


async def heartbeat(
    conn: Conn, ti_id: int, increment: float, fields: dict[str, Any], reporter: str | None = None
) -> bool:
    """Extend a RUNNING instance's deadline; False if it is not RUNNING (or, with `reporter`,
    was started by another worker).

    With no other field sent: one guarded UPDATE of its deadline row, which locks no instance.
    With fields (written to the instance): one statement on PostgreSQL, which updates the
    instance, then its deadline row; on SQLite two (the caller opened a transaction).
    """
    sent = tuple(k for k in _HEARTBEAT_FIELDS if k in fields)
    name = dialect(conn)
    guarded = reporter is not None
    prepared = prepare(name, ("heartbeat", sent, guarded), lambda: _heartbeat(sent, name, guarded))
    params = {"ti_id": ti_id, "increment": increment, **{f"v_{k}": fields[k] for k in sent}}
    if guarded:
        params["reporter"] = reporter
    beat = (await conn.run(prepared, params)).first() is not None
    if beat and sent and name != "postgresql":
        again = prepare(name, ("heartbeat", (), guarded), lambda: _heartbeat((), name, guarded))
        beat = (await conn.run(again, params)).first() is not None
    return beat


def heartbeat_has_fields(fields: dict[str, Any]) -> bool:
    """Whether `heartbeat` writes fields to the instance (two statements on SQLite)."""
    return any(k in fields for k in _HEARTBEAT_FIELDS)


def _heartbeat_batch(name: str, ordered: bool) -> Any:
    mine = ids_placeholder(_DL_ID, name)
    if ordered and name == "postgresql":
        locked = select(_DL_ID).where(mine).order_by(_DL_ID).with_for_update().subquery("locked")
        mine = locked.c[0] == _DL_ID
    return update(DEADLINE).where(mine).values(_new_deadline())


async def heartbeat_batch(conn: Conn, ids: Sequence[int], increment: float, ordered: bool) -> int:
    """Extend the deadline of every LAUNCHED or RUNNING instance in `ids`: one statement.

    Those are exactly the instances with a deadline row (store.deadlines), so it reads and
    writes the narrow deadline rows only. `ordered` (PostgreSQL): lock them in id order first
    (store.locks), as a move of many instances waits for them; unordered, the caller must not
    wait for a lock long (`locks.wait_briefly`), as it may take them in any order.
    """
    name = dialect(conn)
    prepared = prepare(name, ("heartbeat_batch", ordered), lambda: _heartbeat_batch(name, ordered))
    params = {"ids": ids_value(ids, name), "increment": increment}
    return (await conn.run(prepared, params)).rowcount


def _status_of() -> Any:
    return select(TI.c.status).where(TI.c.id == bindparam("ti_id"))


async def owner_of(conn: Conn, ti_id: int) -> tuple[str, str | None] | None:
    """(status, reporter) of an instance, or None if there is no such instance."""
    stmt = select(TI.c.status, TI.c.reporter).where(TI.c.id == ti_id)
    row = (await conn.execute(stmt)).first()
    return None if row is None else (str(row[0]), row[1])


async def status_of(conn: Conn, ti_id: int) -> str | None:
    """The instance's status, or None if there is no such instance."""
    prepared = prepare(dialect(conn), "status_of", _status_of)
    return (await conn.run(prepared, {"ti_id": ti_id})).scalar()  # type: ignore[no-any-return]


def _array_instance_id() -> Any:
    return select(TI.c.id).where(
        TI.c.array_id == bindparam("array_id"),
        TI.c.array_batch_num == bindparam("batch_num"),
        TI.c.array_step_id == bindparam("step_id"),
    )


async def array_instance_id(conn: Conn, array_id: int, batch_num: int, step_id: int) -> int | None:
    """The instance that is step `step_id` of batch `batch_num` of array `array_id`."""
    prepared = prepare(dialect(conn), "array_instance_id", _array_instance_id)
    params = {"array_id": array_id, "batch_num": batch_num, "step_id": step_id}
    return (await conn.run(prepared, params)).scalar()  # type: ignore[no-any-return]


async def worker_view(conn: Conn, ti_id: int) -> dict[str, Any] | None:
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
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else dict(row)


async def error_log(conn: Conn, ti_id: int) -> list[tuple[int, Any, str]]:
    """The error-log rows of an instance, oldest first."""
    stmt = (
        select(ERRLOG.c.id, ERRLOG.c.error_time, ERRLOG.c.description)
        .where(ERRLOG.c.task_instance_id == ti_id)
        .order_by(ERRLOG.c.id)
    )
    return [tuple(r) for r in (await conn.execute(stmt)).all()]


async def heartbeat_is_fresh(conn: Conn, ti_id: int) -> bool | None:
    """Whether the instance's deadline is still ahead (None: no such instance)."""
    deadline = report_by()[0]
    stmt = (
        select(deadline.is_not(None) & (deadline > db_now()))
        .select_from(with_deadline())
        .where(TI.c.id == ti_id)
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else bool(row[0])
