"""Queries on workflows, arrays and tasks: submission in bulk, counts, listings."""

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    text,
)
from sqlalchemy.dialects import postgresql

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import JSONType, db_now
from farmstead.metrics import EVENTS_WRITTEN, TRANSITIONS
from farmstead.store.scheduling import QUEUE
from farmstead.store.sql import (
    ARRAY,
    ERRLOG,
    EVENT,
    TASK,
    TASK_COUNT,
    TI,
    WORKFLOW,
    dialect,
    id_in,
    report_by,
    with_deadline,
)


async def create_workflow(
    conn: Conn,
    name: str,
    retry_delay: float,
    uuid: str | None = None,
    pull_timeout: float | None = None,
    place: dict[str, Any] | None = None,
) -> int:
    """Insert a workflow (with `uuid`: a pull-based taskfarm run; `place`: its queue_id and
    knobs); returns its id."""
    stmt = WORKFLOW.insert().values(
        name=name,
        retry_delay=retry_delay,
        created_date=db_now(),
        uuid=uuid,
        pull_timeout=pull_timeout,
        **(place or {}),
    )
    return int((await conn.execute(stmt.returning(WORKFLOW.c.id))).scalar_one())


async def create_array(
    conn: Conn, workflow_id: int, name: str, batches: int, max_running: int
) -> int:
    """Insert an array whose first `batches` batch numbers are taken; returns its id."""
    stmt = ARRAY.insert().values(
        workflow_id=workflow_id,
        name=name,
        last_batch_num=batches,
        max_concurrently_running=max_running,
        created_date=db_now(),
    )
    return int((await conn.execute(stmt.returning(ARRAY.c.id))).scalar_one())


def _task_columns(workflow_id: int, array_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    held = bool(spec.get("held"))
    return {
        "workflow_id": literal(workflow_id),
        "array_id": literal(array_id),
        # a HELD task (it waits on upstream tasks) has no instance yet
        "status": literal("H" if held else "Q"),
        "status_date": db_now(),
        "num_attempts": literal(0 if held else 1),
        "max_attempts": literal(spec["max_attempts"]),
        "priority": literal(spec["priority"]),
        "resources": bindparam("resources", spec["resources"], type_=JSONType),
        "resource_scales": bindparam("scales", spec["resource_scales"], type_=JSONType),
        "progress": literal(0.0),
        "time_submitted": db_now(),
    }


async def insert_range(
    conn: Conn,
    workflow_id: int,
    array_id: int,
    first: int,
    last: int,
    spec: dict[str, Any],
    batch_size: int,
) -> int:
    """One task per i in first..last, `{i}` replaced in command and name, and its first QUEUED
    instance: step i - first of the array, in batches of `batch_size`. Returns how many.

    PostgreSQL: one statement. Each i draws its task id from the task sequence first, so the
    tasks and their instances are inserted from the same rows, without reading the new tasks
    back or ranking them (each instance's foreign key is checked at the end of the statement,
    when its task is there). SQLite: the tasks, then their instances from the same count, each
    task's id computed from i (two statements; the new tasks are not read back).

    With `spec["held"]` the tasks are HELD and get no instance (store.graph releases them).
    """
    held = bool(spec.get("held"))
    if dialect(conn) != "postgresql":
        await _insert_range_tasks_sqlite(conn, workflow_id, array_id, first, last, spec)
        if held:
            return last - first + 1
        return await _insert_range_instances_sqlite(
            conn, workflow_id, array_id, first, last, spec, batch_size
        )
    seq = (await conn.execute(select(func.pg_get_serial_sequence("task", "id")))).scalar_one()
    seq_literal = "'" + str(seq).replace("'", "''") + "'::regclass"
    series = func.generate_series(first, last).table_valued("i").render_derived()
    ids = (
        select(series.c.i, func.nextval(literal_column(seq_literal)).label("id"))
        .cte("ids")
        .prefix_with("MATERIALIZED")
    )
    cols = _task_columns(workflow_id, array_id, spec)
    i_text = cast(ids.c.i, String)
    cols["id"] = ids.c.id
    cols["name"] = func.replace(literal(spec["name"]), "{i}", i_text)
    cols["command"] = func.replace(literal(spec["command"]), "{i}", i_text)
    insert_tasks = insert(TASK).from_select(
        list(cols), select(*[v.label(k) for k, v in cols.items()])
    )
    if held:
        await conn.execute(insert_tasks.add_cte(ids))
        return last - first + 1
    tasks = insert_tasks.cte("tasks")
    instances = select(
        *_range_instance(ids.c.id, ids.c.i - first, workflow_id, array_id, spec, batch_size)
    )
    stmt = insert(TI).from_select(INSTANCE_COLUMNS, instances).add_cte(tasks)
    result = await conn.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _insert_range_tasks_sqlite(
    conn: Conn,
    workflow_id: int,
    array_id: int,
    first: int,
    last: int,
    spec: dict[str, Any],
) -> None:
    """The tasks of a range: a recursive CTE counts from first to last (it yields them in
    order: the tasks' ids follow i)."""
    series = _series_sqlite(first, last)
    i_text = cast(series.c.i, String)
    cols = _task_columns(workflow_id, array_id, spec)
    cols["name"] = func.replace(literal(spec["name"]), "{i}", i_text)
    cols["command"] = func.replace(literal(spec["command"]), "{i}", i_text)
    sel = select(*[v.label(k) for k, v in cols.items()]).select_from(series)
    await conn.execute(insert(TASK).from_select(list(cols), sel))


def _series_sqlite(first: int, last: int) -> Any:
    """first..last, one row each, in order: a recursive CTE (SQLite has no generate_series)."""
    start = select(literal(first).label("i")).cte("series", recursive=True)
    return start.union_all(select((start.c.i + 1).label("i")).where(start.c.i < last))


def _range_instance(
    task_id: Any, rank: Any, workflow_id: int, array_id: int, spec: dict[str, Any], batch_size: int
) -> list[Any]:
    """The columns (`INSTANCE_COLUMNS`) of the first instance of an array's task: step `rank`
    of the array (0 for its first task), in batches of `batch_size`."""
    return [
        task_id,
        literal(workflow_id),
        literal(array_id),
        (rank // batch_size) + 1,
        rank % batch_size,
        literal("Q"),
        db_now(),
        bindparam("resources", spec["resources"], type_=JSONType),
        literal(spec["priority"]),
        literal(bool(spec.get("pull", False))),
    ]


async def _insert_range_instances_sqlite(
    conn: Conn,
    workflow_id: int,
    array_id: int,
    first: int,
    last: int,
    spec: dict[str, Any],
    batch_size: int,
) -> int:
    """The first instances of the tasks `_insert_range_tasks_sqlite` just inserted.

    Task i's id is the last new id - (last - i): SQLite gives the rows of one INSERT the ids
    that follow the table's largest one, in order (a rowid table, no AUTOINCREMENT), and the
    write lock the transaction holds lets no other writer in between.
    """
    series = _series_sqlite(first, last)
    last_id = select(func.max(TASK.c.id)).scalar_subquery()
    task_id = last_id - (last - series.c.i)
    rank = series.c.i - first
    sel = select(
        *_range_instance(task_id, rank, workflow_id, array_id, spec, batch_size)
    ).select_from(series)
    await conn.execute(insert(TI).from_select(INSTANCE_COLUMNS, sel))
    # one row per i, or the statement fails (the driver counts no rows of a WITH statement)
    return last - first + 1


async def insert_listed_tasks(
    conn: Conn, workflow_id: int, array_id: int, tasks: Sequence[dict[str, Any]], ids: bool
) -> list[int]:
    """Insert tasks given one by one, each QUEUED or (with `held`) HELD with no instance yet;
    with `ids`, their ids in order (else []).

    PostgreSQL: one statement over arrays of the values (`unnest`), with ids drawn from the
    sequence first. SQLite: an executemany of one statement (RETURNING the ids when asked)."""
    if dialect(conn) == "postgresql":
        return await _insert_listed_pg(conn, workflow_id, array_id, tasks)
    rows = [
        {
            "workflow_id": workflow_id,
            "array_id": array_id,
            "name": t["name"],
            "command": t["command"],
            "status": "H" if t.get("held") else "Q",
            "num_attempts": 0 if t.get("held") else 1,
            "max_attempts": t["max_attempts"],
            "priority": t["priority"],
            "resources": t["resources"],
            "resource_scales": t["resource_scales"],
            "progress": 0.0,
        }
        for t in tasks
    ]
    stmt = TASK.insert().values(status_date=db_now(), time_submitted=db_now())
    if not ids:
        await conn.execute(stmt, rows)
        return []
    result = await conn.execute(stmt.returning(TASK.c.id, sort_by_parameter_order=True), rows)
    return [int(r[0]) for r in result.all()]


def _unnest(name: str, item: Any) -> Any:
    return func.unnest(bindparam(name, type_=postgresql.ARRAY(item)))


def _listed_pg() -> Any:
    cols = {
        "id": _unnest("ids", BigInteger()),
        "workflow_id": bindparam("workflow_id", type_=BigInteger()),
        "array_id": bindparam("array_id", type_=BigInteger()),
        "name": _unnest("names", Text()),
        "command": _unnest("commands", Text()),
        "status": _unnest("statuses", Text()),
        "status_date": db_now(),
        "num_attempts": _unnest("tries", Integer()),
        "max_attempts": _unnest("max_attempts", Integer()),
        "priority": _unnest("priorities", Integer()),
        "resources": cast(_unnest("resources", Text()), postgresql.JSONB),
        "resource_scales": cast(_unnest("scales", Text()), postgresql.JSONB),
        "progress": literal(0.0),
        "time_submitted": db_now(),
        **{c: literal(0) for c in ("attempts_base", "resets", "attempts", "failures")},
    }
    return insert(TASK).from_select(list(cols), select(*[v.label(k) for k, v in cols.items()]))


async def _insert_listed_pg(
    conn: Conn, workflow_id: int, array_id: int, tasks: Sequence[dict[str, Any]]
) -> list[int]:
    seq = (await conn.execute(select(func.pg_get_serial_sequence("task", "id")))).scalar_one()
    draw = select(func.nextval(literal(str(seq)).cast(postgresql.REGCLASS))).select_from(
        func.generate_series(1, len(tasks))
    )
    ids = sorted(int(i) for i in (await conn.execute(draw)).scalars())

    def as_json(value: Any) -> str | None:
        return None if value is None else json.dumps(value)

    params = {
        "ids": ids,
        "workflow_id": workflow_id,
        "array_id": array_id,
        "names": [t["name"] for t in tasks],
        "commands": [t["command"] for t in tasks],
        "statuses": ["H" if t.get("held") else "Q" for t in tasks],
        "tries": [0 if t.get("held") else 1 for t in tasks],
        "max_attempts": [t["max_attempts"] for t in tasks],
        "priorities": [t["priority"] for t in tasks],
        "resources": [as_json(t["resources"]) for t in tasks],
        "scales": [as_json(t["resource_scales"]) for t in tasks],
    }
    await conn.run(prepare("postgresql", "insert_listed_tasks", _listed_pg), params)
    return ids


INSTANCE_COLUMNS = [
    "task_id",
    "workflow_id",
    "array_id",
    "array_batch_num",
    "array_step_id",
    "status",
    "status_date",
    "resources",
    "priority",
    "pull",
]


async def insert_first_instances(conn: Conn, array_id: int, batch_size: int) -> int:
    """A QUEUED instance for every QUEUED task of a new array (not the HELD ones), batch b /
    step s: one statement."""
    rank = (func.row_number().over(order_by=TASK.c.id) - 1).label("rank")
    ranked = (
        select(TASK.c.id, TASK.c.workflow_id, TASK.c.resources, TASK.c.priority, rank)
        .where(TASK.c.array_id == array_id, TASK.c.status == "Q")
        .subquery()
    )
    sel = select(
        ranked.c.id,
        ranked.c.workflow_id,
        literal(array_id),
        (ranked.c.rank // batch_size) + 1,
        ranked.c.rank % batch_size,
        literal("Q"),
        db_now(),
        ranked.c.resources,
        ranked.c.priority,
        literal(False),
    )
    result = await conn.execute(insert(TI).from_select(INSTANCE_COLUMNS, sel))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def insert_sent_events(conn: Conn, workflow_id: int) -> int:
    """A QUEUED event (Celery's task-sent) for every instance of a new workflow: one
    statement, in instance order."""
    sel = (
        select(
            db_now(),
            TI.c.workflow_id,
            literal("task_instance"),
            TI.c.id,
            null(),
            literal("Q"),
            null(),
        )
        .where(TI.c.workflow_id == workflow_id)
        .order_by(TI.c.id)
    )
    columns = ["time", "workflow_id", "entity", "entity_id", "from_status", "to_status", "details"]
    result = await conn.execute(insert(EVENT).from_select(columns, sel))
    written = int(result.rowcount)  # type: ignore[attr-defined]
    EVENTS_WRITTEN.inc(written)
    TRANSITIONS.labels("task_instance", "", "Q").inc(written)
    return written


async def mark_cancelled(conn: Conn, workflow_id: int) -> None:
    """Flag a workflow as cancelled (kept if it already is)."""
    await conn.execute(
        WORKFLOW.update()
        .where(WORKFLOW.c.id == workflow_id, WORKFLOW.c.cancelled_date.is_(None))
        .values(cancelled_date=db_now())
    )


async def clear_cancelled(conn: Conn, workflow_id: int) -> None:
    """Lift a workflow's cancel flag."""
    await conn.execute(
        WORKFLOW.update().where(WORKFLOW.c.id == workflow_id).values(cancelled_date=None)
    )


async def record_event(
    conn: Conn, workflow_id: int, to_status: str, details: dict[str, Any]
) -> None:
    """A workflow-level event (submission, cancel, resume)."""
    EVENTS_WRITTEN.inc()
    await conn.execute(
        EVENT.insert().values(
            workflow_id=workflow_id,
            entity="workflow",
            entity_id=workflow_id,
            from_status=None,
            to_status=to_status,
            details=details,
            time=db_now(),
        )
    )


def _queue_path() -> Any:
    """The path of the workflow's queue ('/': the root)."""
    path = select(QUEUE.c.path).where(QUEUE.c.id == WORKFLOW.c.queue_id).scalar_subquery()
    return func.coalesce(path, "/").label("queue")


async def workflow_row(conn: Conn, workflow_id: int) -> dict[str, Any] | None:
    """A workflow's own columns."""
    row = (
        (await conn.execute(select(WORKFLOW, _queue_path()).where(WORKFLOW.c.id == workflow_id)))
        .mappings()
        .first()
    )
    return None if row is None else (await _with_array_ids(conn, [dict(row)]))[0]


async def _with_array_ids(conn: Conn, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (workflows), each with the ids of its arrays in `array_ids`: one query."""
    if not rows:
        return rows
    stmt = (
        select(ARRAY.c.workflow_id, ARRAY.c.id)
        .where(id_in(ARRAY.c.workflow_id, [r["id"] for r in rows], dialect(conn)))
        .order_by(ARRAY.c.id)
    )
    arrays: dict[int, list[int]] = {}
    for wf_id, array_id in (await conn.execute(stmt)).all():
        arrays.setdefault(int(wf_id), []).append(int(array_id))
    return [{**r, "array_ids": arrays.get(r["id"], [])} for r in rows]


async def task_counts(conn: Conn, workflow_id: int) -> dict[str, int]:
    """How many of a workflow's tasks are in each status (none: omitted).

    Read from the running counters (task_count: a row per array and status, kept by triggers
    on task), summed over the workflow's arrays: one indexed read, whatever its number of tasks.
    """
    stmt = (
        select(TASK_COUNT.c.status, func.sum(TASK_COUNT.c.n))
        .where(TASK_COUNT.c.workflow_id == workflow_id, TASK_COUNT.c.n > 0)
        .group_by(TASK_COUNT.c.status)
    )
    return {s: int(n) for s, n in (await conn.execute(stmt)).all()}


async def task_counts_of(conn: Conn, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """How many tasks of each of several workflows are in each status: one grouped read of
    the running counters (as `task_counts`)."""
    if not workflow_ids:
        return {}
    stmt = (
        select(TASK_COUNT.c.workflow_id, TASK_COUNT.c.status, func.sum(TASK_COUNT.c.n))
        .where(id_in(TASK_COUNT.c.workflow_id, workflow_ids, dialect(conn)), TASK_COUNT.c.n > 0)
        .group_by(TASK_COUNT.c.workflow_id, TASK_COUNT.c.status)
    )
    counts: dict[int, dict[str, int]] = {int(i): {} for i in workflow_ids}
    for wf_id, status, n in (await conn.execute(stmt)).all():
        counts[int(wf_id)][status] = int(n)
    return counts


async def list_workflows(
    conn: Conn,
    limit: int,
    offset: int = 0,
    name: str | None = None,
    below_id: int | None = None,
) -> list[dict[str, Any]]:
    """Workflows, newest first; only names containing `name` (any case), ids below `below_id`."""
    stmt = select(WORKFLOW, _queue_path())
    if name:
        stmt = stmt.where(WORKFLOW.c.name.icontains(name, autoescape=True))
    if below_id is not None:
        stmt = stmt.where(WORKFLOW.c.id < below_id)
    stmt = stmt.order_by(WORKFLOW.c.id.desc()).limit(limit).offset(offset)
    rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
    return await _with_array_ids(conn, rows)


#: a task as a row of a table of tasks (the API's list, the dashboard's page)
TASK_ROW = (
    TASK.c.id,
    TASK.c.name,
    TASK.c.status,
    TASK.c.num_attempts,
    TASK.c.max_attempts,
    TASK.c.last_error,
)


async def list_tasks(
    conn: Conn,
    workflow_id: int,
    status: Sequence[str] | None,
    limit: int,
    after_id: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """A page of a workflow's tasks (by id), and how many match in all."""
    where = [TASK.c.workflow_id == workflow_id]
    if status:
        where.append(TASK.c.status.in_(status))
    total = (await conn.execute(select(func.count()).select_from(TASK).where(*where))).scalar_one()
    stmt = (
        select(
            *TASK_ROW,
            TASK.c.array_id,
            TASK.c.progress,
            TASK.c.attempts,
            TASK.c.failures,
        )
        .where(*where, TASK.c.id > after_id)
        .order_by(TASK.c.id)
        .limit(limit)
        .offset(offset)
    )
    return [dict(r) for r in (await conn.execute(stmt)).mappings().all()], int(total)


async def task_detail(conn: Conn, task_id: int) -> dict[str, Any] | None:
    """A task with its instances (oldest first)."""
    task = (await conn.execute(select(TASK).where(TASK.c.id == task_id))).mappings().first()
    if task is None:
        return None
    record = [c for c in TI.c if c.name not in ("report_by_date", "last_report_date")]
    stmt = (
        select(*record, *report_by())
        .select_from(with_deadline())
        .where(TI.c.task_id == task_id)
        .order_by(TI.c.id)
    )
    instances = (await conn.execute(stmt)).mappings().all()
    return {**dict(task), "instances": [dict(i) for i in instances]}


async def error_logs_of(conn: Conn, ti_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Error-log rows of several instances."""
    if not ti_ids:
        return []
    stmt = select(ERRLOG).where(id_in(ERRLOG.c.task_instance_id, ti_ids, dialect(conn)))
    return [dict(r) for r in (await conn.execute(stmt.order_by(ERRLOG.c.id))).mappings().all()]


async def events_of(
    conn: Conn, workflow_id: int, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """A workflow's events in order."""
    stmt = (
        select(EVENT)
        .where(EVENT.c.workflow_id == workflow_id, EVENT.c.id > after_id)
        .order_by(EVENT.c.id)
        .limit(limit)
    )
    return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


async def batch_keys(conn: Conn, ti_ids: Sequence[int]) -> list[tuple[int, int, str, int, int]]:
    """(instance, array, array name, batch, step) for each of `ti_ids`."""
    if not ti_ids:
        return []
    stmt = (
        select(TI.c.id, TI.c.array_id, ARRAY.c.name, TI.c.array_batch_num, TI.c.array_step_id)
        .join(ARRAY, ARRAY.c.id == TI.c.array_id)
        .where(id_in(TI.c.id, ti_ids, dialect(conn)))
    )
    return [tuple(r) for r in (await conn.execute(stmt)).all()]


async def cluster(conn: Conn, name: str) -> tuple[int, str, str, str | None] | None:
    """A cluster by name."""
    row = (
        await conn.execute(
            text(
                "SELECT id, name, cluster_type_name, connection_parameters FROM cluster "
                "WHERE name = :name"
            ),
            {"name": name},
        )
    ).first()
    return None if row is None else (int(row[0]), row[1], row[2], row[3])


async def instance_statuses(
    conn: Conn, ti_ids: Sequence[int], resources: bool = False
) -> list[tuple[Any, ...]]:
    """(id, status) of each of `ti_ids` that exists; with `resources`, (id, status, resources):
    one statement."""
    if not ti_ids:
        return []
    stmt = select(TI.c.id, TI.c.status)
    if resources:  # a retry's own (scaled) resources, else its task's
        stmt = stmt.add_columns(
            func.coalesce(TI.c.resources, TASK.c.resources).label("resources")
        ).join(TASK, TASK.c.id == TI.c.task_id)
    stmt = stmt.where(id_in(TI.c.id, ti_ids, dialect(conn)))
    return [tuple(r) for r in (await conn.execute(stmt.order_by(TI.c.id))).all()]


async def refresh_statistics(conn: Conn) -> None:
    """Refresh the planner's statistics of the instance and task tables (PostgreSQL).

    After a large submission they say there are next to no QUEUED rows until autovacuum's
    next analyze, and the planner then sorts every QUEUED row for a claim instead of walking
    the claim-order index. SQLite's planner is steered by `likely` instead (store.bulk).
    """
    if dialect(conn) == "postgresql":
        await conn.execute(text("ANALYZE task_instance, task"))
