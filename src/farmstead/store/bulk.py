"""Set-based reads and writes of many instances at once (one statement per chunk)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now, seconds_from_now
from farmstead.store.locks import in_lock_order, instances_by_id, lock_tasks
from farmstead.store.sql import (
    ARRAY,
    DEADLINE,
    ERRLOG,
    PLUS_ONE,
    TASK,
    TI,
    WORKFLOW,
    dialect,
    id_in,
    id_pairs,
    report_by,
    update_by_ids,
    with_deadline,
)


@dataclass(frozen=True)
class Candidate:
    """An instance and its task, locked for a set-based move."""

    ti_id: int
    ti_status: str
    task_id: int
    task_status: str
    tries: int  # tries used since the last resume (the retry policy counts these)
    max_attempts: int
    workflow_id: int
    array_id: int
    resources: dict[str, Any] | None
    resource_scales: dict[str, float] | None
    retry_delay: float
    cancelled: bool  # the workflow was cancelled: no retries
    report_by_date: datetime | None
    last_report_date: datetime | None = None


@dataclass(frozen=True)
class Sweep:
    """Instances a reconciler rule matches, and the order its index yields them in.

    Ordering by the indexed column (not by id) lets a chunk stop after `limit` expired rows
    instead of walking past every healthy one: the cost follows the expired rows.
    """

    where: ColumnElement[bool]
    order: ColumnElement[Any]
    #: the rule reads the deadline rows (store.deadlines): joined, and locked with the rows
    deadline: bool = False


def _candidates(
    where: ColumnElement[bool] | Sweep, limit: int | None, skip_locked: bool, by_priority: bool
) -> Any:
    joined: Any = TI.join(TASK, TASK.c.id == TI.c.task_id).join(
        WORKFLOW, WORKFLOW.c.id == TASK.c.workflow_id
    )
    locked = [TI, TASK]
    report_by_date, last_report_date = report_by()
    if isinstance(where, Sweep) and where.deadline:
        # the deadline rows too: a heartbeat that extended one meanwhile (or holds it) wins
        joined = joined.join(DEADLINE, DEADLINE.c.task_instance_id == TI.c.id)
        locked.append(DEADLINE)
    else:
        joined = with_deadline(joined)
    if isinstance(where, Sweep):  # exactly the index's order, so the LIMIT can stop the scan
        where, order = where.where, [where.order]
    else:
        # the instance's own copy of its task's priority: ix_task_instance_queued_priority_id
        # (or, for one workflow, …_workflow_id_status_priority_id) yields this order, so the
        # LIMIT stops the scan after `limit` rows whatever the number of QUEUED instances
        order = [TI.c.priority.desc()] if by_priority else []
        order.append(TI.c.id)
    stmt = (
        select(
            TI.c.id,
            TI.c.status,
            TASK.c.id,
            TASK.c.status,
            (TASK.c.num_attempts - TASK.c.attempts_base).label("tries"),
            TASK.c.max_attempts,
            TI.c.workflow_id,
            TI.c.array_id,
            TI.c.resources,
            TASK.c.resource_scales,
            WORKFLOW.c.retry_delay,
            WORKFLOW.c.cancelled_date.is_not(None),
            report_by_date,
            last_report_date,
        )
        .select_from(joined)
        .where(where)
        .order_by(*order)
        .with_for_update(of=locked, skip_locked=skip_locked)
    )
    return stmt.limit(limit) if limit else stmt


async def lock_candidates(
    conn: Conn,
    where: ColumnElement[bool] | Sweep,
    limit: int | None = None,
    skip_locked: bool = True,
    by_priority: bool = False,
) -> list[Candidate]:
    """Lock and read the instances matching `where`, with their tasks.

    With `skip_locked` (claims, sweeps, distributor batches): one statement that skips every
    instance or task another transaction holds, so it never waits, in whatever order it reads
    (a sweep's index, a claim's priorities). Without it (cancel): wait for each lock, in the
    global order (store.locks): the instances by id, then their tasks by id, two statements.
    """
    if skip_locked:
        rows = (await conn.execute(_candidates(where, limit, skip_locked, by_priority))).all()
        return [Candidate(*r) for r in rows]
    if isinstance(where, Sweep) or by_priority:
        raise ValueError("a locking read that waits must take its rows in id order")
    found = (await conn.execute(instances_by_id(where, limit))).all()
    tasks = await lock_tasks(conn, [r.task_id for r in found])
    return [
        Candidate(
            ti_id=r.id,
            ti_status=r.status,
            task_id=r.task_id,
            task_status=(t := tasks[r.task_id]).status,
            tries=t.tries,
            max_attempts=t.max_attempts,
            workflow_id=r.workflow_id,
            array_id=r.array_id,
            resources=r.resources,
            resource_scales=t.resource_scales,
            retry_delay=t.retry_delay,
            cancelled=t.cancelled,
            report_by_date=r.report_by_date,
            last_report_date=r.last_report_date,
        )
        for r in found
    ]


def by_ids(conn: Conn, ids: Sequence[int], statuses: Sequence[str]) -> Any:
    """Instances among `ids` in one of `statuses`."""
    return and_(id_in(TI.c.id, ids, dialect(conn)), TI.c.status.in_(statuses))


#: `status = 'Q'` as a literal, not bound: a partial index on `status = 'Q'` is used only when
#: the planner can see the query implies its condition (a generic plan cannot)
_QUEUED = TI.c.status == literal_column("'Q'")


def _hold_passed() -> ColumnElement[bool]:
    return or_(TI.c.available_date.is_(None), TI.c.available_date <= db_now())


def available_queued(ids: Sequence[int] | None, conn: Conn) -> Any:
    """QUEUED instances whose retry delay (if any) has passed."""
    cond = and_(_QUEUED, _hold_passed())
    return cond if ids is None else and_(cond, id_in(TI.c.id, ids, dialect(conn)))


def of_batch(array_id: int, batch: int, statuses: Sequence[str]) -> Any:
    """Instances of one batch of an array in one of `statuses`."""
    return and_(TI.c.array_id == array_id, TI.c.array_batch_num == batch, TI.c.status.in_(statuses))


def of_workflow(workflow_id: int, statuses: Sequence[str]) -> Any:
    """Instances of a workflow in one of `statuses`."""
    return and_(TI.c.workflow_id == workflow_id, TI.c.status.in_(statuses))


def _status_of_found(status: str) -> ColumnElement[bool]:
    """`status = …` that no index can serve (`status || ''`): a deadline sweep must walk the
    deadline index and look each instance up, not read every instance of the status (the
    planners otherwise may, and the cost then follows the healthy instances)."""
    return TI.c.status.concat(literal_column("''")) == status


def deadline_passed(status: str) -> Sweep:
    """Instances in `status` whose heartbeat deadline has passed (database clock)."""
    where = and_(_status_of_found(status), DEADLINE.c.report_by_date <= db_now())
    return Sweep(where, DEADLINE.c.report_by_date, deadline=True)


def launched_silent(min_age: float) -> Sweep:
    """LAUNCHED instances past their deadline that were launched at least `min_age` ago."""
    where = and_(
        _status_of_found("O"),
        DEADLINE.c.report_by_date <= db_now(),
        TI.c.status_date <= seconds_from_now(-min_age),
    )
    return Sweep(where, DEADLINE.c.report_by_date, deadline=True)


def in_status_for(status: str, seconds: float) -> Sweep:
    """Instances that have been in `status` for at least `seconds` (database clock)."""
    where = and_(TI.c.status == status, TI.c.status_date <= seconds_from_now(-seconds))
    return Sweep(where, TI.c.status_date)


async def set_instances(
    conn: Conn, ids: Sequence[int], status: str, values: dict[str, Any]
) -> None:
    """Move instances to `status` in one statement (rows the caller locked: no new lock)."""
    await update_by_ids(conn, TI, ids, {"status": status, "status_date": db_now(), **values})


def per_task(values: dict[int, Any]) -> Any:
    """A column value that differs by task: CASE task.id WHEN … THEN … END."""
    return case(values, value=TASK.c.id, else_=TASK.c.last_error)


async def set_tasks(
    conn: Conn,
    ids: Sequence[int],
    status: str,
    values: dict[str, Any],
    bump_attempts: bool = False,
) -> None:
    """Move tasks to `status` in one statement (rows the caller locked: no new lock)."""
    extra = dict(values)
    if bump_attempts:
        extra["num_attempts"] = PLUS_ONE
    await update_by_ids(conn, TASK, ids, {"status": status, "status_date": db_now(), **extra})


def _insert_error_log() -> Any:
    return ERRLOG.insert().values(
        error_time=db_now(),
        task_instance_id=bindparam("task_instance_id"),
        description=bindparam("description"),
    )


async def add_error_logs(conn: Conn, descriptions: dict[int, str]) -> None:
    """One error-log row per instance: {task_instance_id: description}."""
    if descriptions:
        prepared = prepare(dialect(conn), "insert_error_log", _insert_error_log)
        await conn.run(
            prepared,
            [{"task_instance_id": i, "description": d} for i, d in descriptions.items()],
        )


def _next_batches() -> Any:
    return (
        update(ARRAY)
        .where(ARRAY.c.id == bindparam("array_id"))
        .values(last_batch_num=ARRAY.c.last_batch_num + bindparam("count", type_=Integer()))
        .returning(ARRAY.c.last_batch_num)
    )


async def next_batches(conn: Conn, array_id: int, count: int) -> int:
    """Reserve `count` new batch numbers of an array; returns the first."""
    prepared = prepare(dialect(conn), "next_batches", _next_batches)
    last = (await conn.run(prepared, {"array_id": array_id, "count": count})).scalar()
    return int(last) - count + 1


async def insert_queued(conn: Conn, rows: list[dict[str, Any]]) -> list[int]:
    """Insert QUEUED instances (retries; `retry_of`: the failed instance); returns their ids in
    order.

    Each takes its task's priority (the claim order) and its workflow's kind (pull-based or
    not) in the same statement.
    """
    if not rows:
        return []
    priority = select(TASK.c.priority).where(TASK.c.id == bindparam("of_task"))
    # a retry of a pull-based run's task is its run's to claim, like the first try
    pull = select(WORKFLOW.c.pull_timeout.is_not(None)).where(
        WORKFLOW.c.id == bindparam("of_workflow")
    )
    # not offered again to the agent the failed try ran on, while another agent could take it
    failed_on = select(TI.c.agent_id).where(TI.c.id == bindparam("of_instance"))
    result = await conn.execute(
        TI.insert()
        .values(
            status="Q",
            status_date=db_now(),
            priority=priority.scalar_subquery(),
            pull=pull.scalar_subquery(),
            avoid_agent_id=failed_on.scalar_subquery(),
        )
        .returning(TI.c.id, sort_by_parameter_order=True),
        [
            {
                **{k: v for k, v in r.items() if k != "retry_of"},
                "of_task": r["task_id"],
                "of_workflow": r["workflow_id"],
                "of_instance": r.get("retry_of"),
            }
            for r in rows
        ],
    )
    return [int(r[0]) for r in result.all()]


async def set_distributor_ids(conn: Conn, array_id: int, mapping: dict[int, str]) -> int:
    """Write the distributor ids of many instances of one array: one statement, any number."""
    if not mapping:
        return 0
    pairs = id_pairs(mapping, dialect(conn))
    # `+ 0`: SQLite then loops over the pairs and finds each row by its primary key, instead
    # of scanning the array's rows and searching the pairs for each one (n²)
    mine = TI.c.array_id + 0 == array_id
    if dialect(conn) == "postgresql":  # lock them by id first: the global order
        mine = in_lock_order(conn, TI.c.id, mine & id_in(TI.c.id, list(mapping), "postgresql"))
    stmt = (
        update(TI)
        .where(TI.c.id == pairs.c.id, mine)
        .values(distributor_id=pairs.c.value)
        .execution_options(synchronize_session=False)
    )
    return int((await conn.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def count_where(conn: Conn, where: ColumnElement[bool]) -> int:
    """How many instances match."""
    return int((await conn.execute(select(func.count()).select_from(TI).where(where))).scalar_one())


async def array_exists(conn: Conn, array_id: int) -> bool:
    """Whether there is such an array."""
    found = await conn.execute(select(ARRAY.c.id).where(ARRAY.c.id == array_id))
    return found.first() is not None


async def hold_until(conn: Conn, ids: Sequence[int], when: Any) -> None:
    """Hold queued instances back until `when` (a retry delay)."""
    await conn.execute(
        update(TI)
        .where(id_in(TI.c.id, ids, dialect(conn)))
        .values(available_date=when)
        .execution_options(synchronize_session=False)
    )
