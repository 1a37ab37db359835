"""Queries on task instances and their tasks: locks, guarded updates, heartbeats, lookups."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, and_, bindparam, select, update

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now, seconds_from_now
from farmstead.store.locks import in_lock_order
from farmstead.store.rows import InstanceRow, TaskRow
from farmstead.store.sql import ERRLOG, TASK, TI, WORKFLOW, dialect, id_in


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


async def heartbeat(
    conn: Conn, ti_id: int, increment: float, fields: dict[str, Any], reporter: str | None = None
) -> bool:
    """Extend a RUNNING instance's deadline (one guarded UPDATE, locking only that row, in a
    transaction that holds no other lock); False if it is not RUNNING (or, with `reporter`,
    was started by another worker)."""
    sent = tuple(k for k in _HEARTBEAT_FIELDS if k in fields)
    guarded = reporter is not None

    def build() -> Any:
        owner = TI.c.reporter.is_(None) | (TI.c.reporter == bindparam("reporter"))
        return (
            update(TI)
            .where(TI.c.id == bindparam("ti_id"), TI.c.status == "R", *([owner] if guarded else []))
            .values(
                report_by_date=seconds_from_now(bindparam("increment", type_=Float())),
                last_report_date=db_now(),
                **{k: bindparam(f"v_{k}", type_=TI.c[k].type) for k in sent},
            )
            .returning(TI.c.id)
        )

    prepared = prepare(dialect(conn), ("heartbeat", sent, guarded), build)
    params = {"ti_id": ti_id, "increment": increment, **{f"v_{k}": fields[k] for k in sent}}
    if guarded:
        params["reporter"] = reporter
    return (await conn.run(prepared, params)).first() is not None


async def heartbeat_batch(conn: Conn, ids: Sequence[int], increment: float) -> int:
    """Extend the deadline of every LAUNCHED or RUNNING instance in `ids`: one statement.

    The rows are locked in id order first (store.locks), as every other writer locks them.
    """
    live = and_(id_in(TI.c.id, ids, dialect(conn)), TI.c.status.in_(("O", "R")))
    stmt = (
        update(TI)
        .where(in_lock_order(conn, TI.c.id, live))
        .values(report_by_date=seconds_from_now(increment), last_report_date=db_now())
        .execution_options(synchronize_session=False)
    )
    result = await conn.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


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
    stmt = select(TI.c.report_by_date.is_not(None) & (TI.c.report_by_date > db_now())).where(
        TI.c.id == ti_id
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else bool(row[0])
